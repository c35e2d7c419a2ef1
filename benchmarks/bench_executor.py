"""The Ray executor's overhead: the same Monte-Carlo trials and sweep in process and on Ray.

    python benchmarks/bench_executor.py [--device cpu] [--workers 2]

Starts a local Ray cluster (``--workers`` CPUs, a small object store, no dashboard), runs the
same fixed-budget ``cc.stochastic_ablation`` (fixed keep probability, no sequential stopping)
and the same ``cc.sweep`` with ``executor=None`` and ``executor="ray"``, interleaved, and prints
a markdown table of medians and their ratio. The workers are started and load the model once,
before timing (that one-off cost is its own row). On a machine whose cores the driver already
uses, Ray cannot be faster: the ratio is its overhead (serialisation, round trips, one torch
thread per worker). Prints one line and exits 0 when Ray is not installed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Any

import numpy as np
import torch

import circuitcheck as cc
from _common import gpt2_shaped, interleaved, machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--trials", type=int, default=512, help="Monte-Carlo trials on zoo:planted")
    ap.add_argument("--gpt2-layers", type=int, default=2,
                    help="also a GPT-2-shaped model (d 768, 50257 tokens) of this many layers; "
                         "0 skips it")
    args = ap.parse_args()
    if importlib.util.find_spec("ray") is None:
        print("Ray is not installed here (pip install 'circuitcheck[ray]'): nothing measured.")
        return
    import ray

    from circuitcheck import executors

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, object_store_memory=150 * 1024 ** 2,
             include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    rows = []
    try:
        cases = [("zoo:planted", "zoo:planted", args.trials, 32)]
        if args.gpt2_layers:
            cases.append((f"GPT-2-shaped, {args.gpt2_layers} layers, d 768",
                          str(gpt2_shaped(args.gpt2_layers)), 64, 16))
        for label, name, trials, n in cases:
            model = cc.load_model(name, device=args.device)
            task = cc.tasks.induction(model, n=n, seq_len=10, seed=0)
            ex = executors.get_executor("ray")
            t0 = time.perf_counter()
            workers = ex.slots(model)  # starts the actors; each loads the model
            t_start = time.perf_counter() - t0
            mc = dict(trials=trials, keep_prob=0.5, exclusion_keep_prob=None, ablation="mean",
                      seed=0, progress=False)
            circuit = cc.Circuit({"c": ["0.0", "1.1"]})
            sw = dict(ablation=["zero", "mean"], metric=["logit_diff", "top1"], seed=0)
            def one_thread(fn: Any) -> Any:  # in process as each worker runs: 1 torch thread
                before = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    return fn()
                finally:
                    torch.set_num_threads(before)

            fns = {"mc local": lambda: cc.stochastic_ablation(model, task, **mc),
                   "mc local 1 thread": lambda: one_thread(
                       lambda: cc.stochastic_ablation(model, task, **mc)),
                   "mc ray": lambda: cc.stochastic_ablation(model, task, executor="ray", **mc),
                   "sweep local": lambda: cc.sweep(model, task, circuit, **sw),
                   "sweep ray": lambda: cc.sweep(model, task, circuit, executor="ray", **sw)}
            a = fns["mc local"]()
            b = fns["mc ray"]()
            same = np.array_equal(a.raw["importance"]["masks"], b.raw["importance"]["masks"])
            diff = float(np.abs(a.raw["importance"]["metric"] - b.raw["importance"]["metric"]).max())
            med, _ = interleaved(fns, args.device, repeats=args.repeats)
            rows.append(f"| {label} | Monte-Carlo, {trials} trials | {med['mc local']:.2f} s "
                        f"| {med['mc ray']:.2f} s | {med['mc ray'] / med['mc local']:.2f}x "
                        f"| {1e3 * (med['mc ray'] - med['mc local']) / trials:+.2f} ms "
                        f"| masks {'equal' if same else 'DIFFER'}, max metric diff {diff:.1e} |")
            rows.append(f"| {label} | Monte-Carlo, {trials} trials, in process with 1 torch "
                        f"thread | {med['mc local 1 thread']:.2f} s | - "
                        f"| {med['mc ray'] / med['mc local 1 thread']:.2f}x (vs 1 thread) "
                        f"| - | - |")
            rows.append(f"| {label} | sweep, 2 ablations x 2 metrics | {med['sweep local']:.2f} s "
                        f"| {med['sweep ray']:.2f} s "
                        f"| {med['sweep ray'] / med['sweep local']:.2f}x | - | - |")
            rows.append(f"| {label} | start {workers} workers, each loading the model once "
                        f"| - | {t_start:.2f} s | - | - | - |")
            print("\n".join(rows[-4:]), file=sys.stderr, flush=True)  # progress
    finally:
        executors.shutdown()
        ray.shutdown()
    print(f"Machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the end; local "
          f"Ray cluster with {args.workers} CPUs, started "
          f"in {t_init:.1f} s; torch threads: {torch.get_num_threads()} in process, "
          f"{args.workers} workers with 1 each. Same seed, same trials both ways; medians of "
          f"{args.repeats}, interleaved.\n")
    print("| model | work | in process | Ray | Ray / in process | per trial | same results |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
