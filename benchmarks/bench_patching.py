"""Per-head activation patching: how fast is ``cc.patch_heads`` against the plain ways?

Run ``python benchmarks/bench_patching.py [--device cpu] [--layers 4] [--prompts 16]``. Builds a
GPT-2-small-shaped model (d_model 768, 12 heads, vocabulary 50257) with random weights and
fewer layers, saves it with a word-level tokenizer, and times in one process (median of the
repeats, methods interleaved so machine load hits them alike):

(a) one full forward per head over all prompts (hook_z of that head patched clean -> corrupted);
(a2) the same reading logits only at the last token (what (c) gains from that alone);
(b) ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` (it runs on the bridge);
(c) ``cc.patch_heads`` (exact: starts each run at the patched layer, reads the last token);
(d) ``cc.attribution_patch_heads`` (one forward + backward).

Prints a markdown table with ratios to (a) and each method's share of the physical limit (its
own forward FLOPs over the device's measured matmul rate), the largest difference between (c)
and (a), and the correlation of (d) with (c). Not run by the test suite.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from _common import forward_flops, gpt2_shaped, machine, matmul_rate, target


def build_task(model: Any, n: int, words: int, seed: int = 0) -> Any:
    """Same-length clean/corrupted prompts; answer = the clean top token, wrong = the corrupted
    one's (so the model separates them by construction)."""
    import circuitcheck as cc

    rng = random.Random(seed)
    vocab = [f"t{i}" for i in range(60)]
    prompts = [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]
    corrupted = [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]
    answers, wrong = [], []
    with torch.inference_mode():
        for p, c in zip(prompts, corrupted):
            top_clean = model(model.to_tokens(p))[0, -1].topk(2).indices.tolist()
            top_corr = model(model.to_tokens(c))[0, -1].argmax().item()
            answers.append(top_clean[0])
            wrong.append(top_corr if top_corr != top_clean[0] else top_clean[1])
    return cc.Task(prompts=prompts, answers=answers, wrong_answers=wrong, corrupted=corrupted,
                   name="bench")


def loop_per_head(model: Any, enc: Any, last_only: bool = False) -> np.ndarray:
    """(a) the plain way: one full forward (all prompts, all logits) per head; with
    ``last_only`` the unembedding runs at each prompt's last token only (a2)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    last = (enc.lengths - 1).to(model.cfg.device)
    read = [("unembed.hook_in", lambda x, hook: x[torch.arange(x.shape[0]), last][:, None])]
    lengths = torch.ones_like(enc.lengths) if last_only else enc.lengths
    with torch.inference_mode():
        clean_logits, cache = model.run_with_cache(enc.tokens.to(model.cfg.device))
        corr_logits = model(enc.corrupted.to(model.cfg.device))
        ld = lambda lo: _ld(lo, enc)  # noqa: E731
        c, k = ld(clean_logits), ld(corr_logits)
        out = np.zeros((L, H))
        for layer in range(L):
            src = cache[f"blocks.{layer}.attn.hook_z"]
            for h in range(H):
                def hook(z: torch.Tensor, hook: Any, h: int = h) -> torch.Tensor:
                    z[:, :, h] = src[:, :, h]
                    return z
                logits = model.run_with_hooks(enc.corrupted.to(model.cfg.device), fwd_hooks=[
                    (f"blocks.{layer}.attn.hook_z", hook)] + (read if last_only else []))
                out[layer, h] = (_ld(logits, enc, lengths) - k) / (c - k)
    return out


def _ld(logits: torch.Tensor, enc: Any, lengths: Any = None) -> float:
    lengths = enc.lengths if lengths is None else lengths
    logits = logits.cpu()
    last = logits[torch.arange(enc.n), lengths - 1]
    n = torch.arange(enc.n)
    return float((last[n, enc.answers] - last[n, enc.wrong]).mean())


def tl_patching(model: Any, enc: Any) -> np.ndarray:
    """(b) transformer_lens.patching on the bridge."""
    from transformer_lens import patching

    with torch.inference_mode():
        clean_logits, cache = model.run_with_cache(enc.tokens.to(model.cfg.device))
        c, k = _ld(clean_logits, enc), _ld(model(enc.corrupted.to(model.cfg.device)), enc)
        metric = lambda lo: (_ld(lo, enc) - k) / (c - k)  # noqa: E731
        return patching.get_act_patch_attn_head_out_all_pos(
            model, enc.corrupted.to(model.cfg.device), cache,
            lambda lo: torch.tensor(metric(lo))).cpu().numpy()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def method_flops(model: Any, enc: Any) -> dict[str, float | None]:
    """Forward FLOPs each method does by its own design (the physical limit's numerator)."""
    L, H, N = model.cfg.n_layers, model.cfg.n_heads, enc.n
    tokens = float(enc.lengths.sum())
    full = forward_flops(model, tokens)
    last = forward_flops(model, tokens, read_positions=N)
    # (c): the clean and corrupted baselines (full logits at the last token), then per head a
    # run from its own layer on that reads two logits (rows of W_U, not the unembedding)
    blocks = forward_flops(model, tokens, read_positions=0) / L
    exact = 2 * last + sum(H * (L - layer) * blocks for layer in range(L))
    return {"(a)": (2 + L * H) * full, "(a2)": 2 * full + L * H * last,
            "(b)": (2 + L * H) * full, "(c)": exact, "(d)": None}


def main() -> None:
    import circuitcheck as cc
    from circuitcheck.measures import patching as P

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--words", type=int, default=19, help="words per prompt (+ BOS)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = cc.load_model(gpt2_shaped(args.layers), device=args.device)
    task = build_task(model, args.prompts, args.words)
    enc = task.encode(model)
    methods = {
        "(a) one full forward per head": lambda: loop_per_head(model, enc),
        "(a2) one forward per head, logits at the last token only":
            lambda: loop_per_head(model, enc, last_only=True),
        "(b) transformer_lens.patching": lambda: tl_patching(model, enc),
        "(c) cc.patch_heads (exact)": lambda: P.patch_heads(model, task).values,
        "(d) cc.attribution_patch_heads": lambda: P.attribution_patch_heads(model, task).values,
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    rates = []
    results: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t, results[name] = timed(fn, args.device)
            times[name].append(t)
        rates.append(matmul_rate(args.device))
    rate = statistics.median(rates)
    med = {m: statistics.median(v) for m, v in times.items()}
    flops = method_flops(model, enc)
    base = med["(a) one full forward per head"]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    print(f"machine: {machine()}; device {args.device}; matmul rate {rate / 1e9:.1f} GFLOP/s\n")
    print(f"GPT-2-small-shaped random model: {L} layers x {H} heads, d_model 768, vocab "
          f"{model.cfg.d_vocab}; {enc.n} prompts of {int(enc.lengths[0])} tokens; "
          f"median of {args.repeats}\n")
    print("| method | median (s) | min (s) | speed-up vs (a) | share of physical limit |")
    print("|---|---:|---:|---:|---:|")
    for m in methods:
        fl = flops[m.split()[0]]
        share = "forward + backward" if fl is None else f"{fl / rate / med[m]:.0%}"
        print(f"| {m} | {med[m]:.2f} | {min(times[m]):.2f} | {base / med[m]:.1f}x | {share} |")
    exact, loop = results["(c) cc.patch_heads (exact)"], results["(a) one full forward per head"]
    attr = results["(d) cc.attribution_patch_heads"]
    tl = results["(b) transformer_lens.patching"]
    corr = float(np.corrcoef(exact.ravel(), attr.ravel())[0, 1])
    print(f"\nmax |(c) - (a)| = {np.abs(exact - loop).max():.2e}; "
          f"max |(b) - (a)| = {np.abs(tl - loop).max():.2e}")
    print(f"attribution vs exact: Pearson r = {corr:.3f}; "
          f"max |(d) - (c)| = {np.abs(attr - exact).max():.3f} "
          f"(exact values span [{exact.min():.3f}, {exact.max():.3f}])\n")
    c = "(c) cc.patch_heads (exact)"
    target("exact head patching vs one forward per head", base / med[c], 2.0, "x")
    target("exact head patching, share of the physical limit", flops["(c)"] / rate / med[c],
           0.70, "%")


if __name__ == "__main__":
    main()
