"""Monte-Carlo stochastic ablation: the notebook loop vs ``cc.stochastic_ablation``.

    python benchmarks/bench_stochastic.py [--device cpu] [--layers 4]

Per trial, and time to a decision: the notebook's procedure is 2 × 10,000 trials through its
loop (one forward per mask, a Python loop over heads inside the hook); circuitcheck decides
the same claim ("these heads are the most important") with sequential stopping. Prints a
markdown table; timings are medians in one process (ratios are what to read).
"""
from __future__ import annotations

import argparse
import time

import torch

import circuitcheck as cc
from _common import (forward_flops, gpt2_shaped, interleaved, machine, median_time,
                     notebook_hook, target)

NOTEBOOK_TRIALS = 2 * 10_000


def notebook_trials(model, enc, n_trials: int, keep_prob: float, seed: int = 0) -> list[bool]:
    """A faithful re-implementation of the notebook: one forward per mask and prompt, the
    ablation done head by head in a Python loop inside the hook, the success read from logits."""
    gen = torch.Generator().manual_seed(seed)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = []
    for t in range(n_trials):
        mask = torch.rand(L, H, generator=gen) < keep_prob
        i = t % enc.n
        hook = notebook_hook(mask)
        with torch.inference_mode():
            logits = model.run_with_hooks(enc.tokens[i:i + 1, : enc.lengths[i]].to(model.cfg.device),
                                          fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)
                                                     for l in range(L)])
        out.append(bool(logits[0, -1].argmax() == enc.answers[i]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--zoo", nargs="+", default=["zoo:planted", "zoo:induction-2l"],
                    help="zoo models for the time-to-decision rows")
    args = ap.parse_args()
    rows = []
    # 1. per-trial cost on a GPT-2-small-shaped model
    model = cc.load_model(gpt2_shaped(args.layers), device=args.device)
    task = cc.tasks.induction(model, n=32, seq_len=10, seed=0)
    enc = task.encode(model)
    n_loop, n_batched = 24, 384
    # the batched forward alone (masks x prompts through run_variants), against its FLOP limit
    from circuitcheck.interventions import Variants, ablation_values, run_variants

    masks = torch.rand(n_batched, model.cfg.n_layers, model.cfg.n_heads,
                       generator=torch.Generator().manual_seed(0)) < 0.3
    prompt_of = torch.arange(n_batched) % enc.n
    zero = ablation_values(model, enc, "zero")
    med, rate = interleaved({
        "loop": lambda: notebook_trials(model, enc, n_loop, 0.3),
        "cc": lambda: cc.stochastic_ablation(model, task, trials=n_batched,
                                             exclusion_keep_prob=None, ablation="zero"),
        # as stochastic_ablation runs it: top-1 reads only whether the argmax is the answer
        "fwd": lambda: run_variants(model, enc, Variants(masks), zero, prompt_of=prompt_of,
                                    reads=("correct",)),
    }, args.device)
    t_loop, t_cc, t_fwd = med["loop"] / n_loop, med["cc"] / n_batched, med["fwd"] / n_batched
    tokens = float(enc.lengths.float().mean())
    limit_loop = forward_flops(model, tokens) / rate
    limit_cc = forward_flops(model, tokens, read_positions=1) / rate
    goals = [("batched forward (run_variants), share of the physical limit", limit_cc / t_fwd,
              0.70, "%")]
    rows.append(("batched forward only (run_variants), per trial", "", f"{t_fwd * 1e3:.1f} ms",
                 "", f"{limit_cc / t_fwd:.0%} of FLOP limit"))
    rows.append(("per trial, GPT-2-shaped %d layers (d=768)" % args.layers,
                 f"{t_loop * 1e3:.1f} ms", f"{t_cc * 1e3:.1f} ms", f"{t_loop / t_cc:.1f}x",
                 f"loop {limit_loop / t_loop:.0%}, cc {limit_cc / t_cc:.0%} of FLOP limit"))
    # 2. time to a decision on zoo models with a known circuit
    from circuitcheck import zoo as zoo_mod

    for name in args.zoo:
        zmodel = cc.load_model(name, device=args.device)
        card = zoo_mod.card(name.split(":", 1)[1])
        heads = [tuple(h) for hs in card["circuit"].values() for h in hs]
        ztask = cc.tasks.induction(zmodel, n=64, seq_len=12, seed=0)
        zenc = ztask.encode(zmodel)
        t_nb_trial = median_time(lambda: notebook_trials(zmodel, zenc, 50, 0.3), 3) / 50
        start = time.perf_counter()
        mc = cc.stochastic_ablation(zmodel, ztask, heads=heads, ablation="zero", trials=10_000)
        t_decide = time.perf_counter() - start
        rows.append((f"time to decision, {name} ({len(heads)} claimed heads)",
                     f"{t_nb_trial * NOTEBOOK_TRIALS:.1f} s (2 x 10,000 trials at "
                     f"{t_nb_trial * 1e3:.2f} ms)",
                     f"{t_decide:.2f} s ({mc.trials_used} trials, decision: {mc.decision})",
                     f"{t_nb_trial * NOTEBOOK_TRIALS / t_decide:.0f}x", ""))
        goals.append((f"time to decision vs the notebook, {name}",
                      t_nb_trial * NOTEBOOK_TRIALS / t_decide, 20.0, "x"))
    print(f"machine: {machine()}; device {args.device}; matmul rate {rate / 1e9:.1f} GFLOP/s\n")
    print("| measurement | notebook loop | circuitcheck | ratio | share of physical limit |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    for goal in goals:
        target(*goal)


if __name__ == "__main__":
    main()
