"""Run every benchmark in this folder and write RESULTS.md (the committed table).

    make bench        # or: python benchmarks/run.py [--device cpu]

Each benchmark runs in its own process, one after the other, so they do not compete.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_stochastic.py", "bench_patching.py", "bench_faithfulness.py"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    parts = [f"# circuitcheck benchmarks\n\nWritten by `python benchmarks/run.py` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Timings are medians in one "
             "process; read the ratios.\n"]
    status = 0
    for bench in BENCHES:
        cmd = [sys.executable, str(HERE / bench), "--device", args.device]
        print(f"== {bench}", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
        text = out.stdout.strip()
        print(text)
        if out.returncode:
            status = 1
            text += f"\n\n(failed, exit {out.returncode}):\n```\n{out.stderr[-3000:]}\n```"
        parts.append(f"## {bench}\n\n{text}\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
