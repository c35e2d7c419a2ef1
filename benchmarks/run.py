"""Run every benchmark in this folder and write RESULTS.md (the committed table).

    make bench        # or: python benchmarks/run.py [--device auto|cpu|cuda]

Each benchmark runs in its own process, one after the other, so they do not compete; on the
CPU always, then on the GPU when there is one.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_stochastic.py", "bench_patching.py", "bench_faithfulness.py", "bench_depth.py",
           "bench_executor.py", "bench_edges.py"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto",
                    help="cpu, cuda[:i], or auto: the CPU always, then the GPU when there is one")
    args = ap.parse_args()
    if args.device == "auto":
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    parts = [f"# circuitcheck benchmarks\n\nWritten by `python benchmarks/run.py` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Timings are medians in one "
             "process; read the ratios.\n"]
    status = 0
    for device in devices:
        for bench in BENCHES:
            status |= run(bench, device, parts)
    results = HERE / "RESULTS.md"
    old = results.read_text(encoding="utf-8") if results.is_file() else ""
    if "## gpu_check.py" in old:  # gpu_check.py's runs are kept: a GPU is not always at hand
        parts.append("## gpu_check.py" + old.split("## gpu_check.py", 1)[1])
    results.write_text("\n".join(parts))
    return status


def run(bench: str, device: str, parts: list[str]) -> int:
    """Run one benchmark on one device in its own process; append its table to ``parts``."""
    print(f"== {bench} ({device})", flush=True)
    out = subprocess.run([sys.executable, str(HERE / bench), "--device", device],
                         capture_output=True, text=True, cwd=HERE)
    text = out.stdout.strip()
    print(text)
    if out.returncode:
        text += f"\n\n(failed, exit {out.returncode}):\n```\n{out.stderr[-3000:]}\n```"
    parts.append(f"## {bench} ({device})\n\n{text}\n")
    return int(out.returncode != 0)


if __name__ == "__main__":
    raise SystemExit(main())
