"""Circuit faithfulness with mean ablation by template: the IOI notebook's hook vs circuitcheck.

    python benchmarks/bench_faithfulness.py [--device cpu] [--layers 4]

The notebook (Wang et al.'s circuit validation, as in the ARENA IOI exercises) caches the
reference run, averages each head's output per template and position, then runs one forward
whose hook loops over heads in Python to write the means outside the circuit, and reads the
logit difference from the full logits. circuitcheck runs the circuit, the full-model and the
all-ablated variants in batched passes with a per-row mask and logits only at the last token.
"""
from __future__ import annotations

import argparse

import torch

import circuitcheck as cc
from _common import forward_flops, gpt2_shaped, interleaved, machine, target


def grouped_task(model, n: int = 64, seq_len: int = 12, seed: int = 0) -> cc.Task:
    """Repeated-token prompts grouped by length (so a group's prompts align, as templates do),
    answered with the random model's own top token against its bottom one, so the full model
    "does" the task and the faithfulness ratio is defined."""
    base = cc.tasks.induction(model, n=n, seq_len=seq_len, seed=seed)
    with torch.inference_mode():
        last = [model(torch.tensor([p]).to(model.cfg.device))[0, -1].cpu() for p in base.prompts]
    return cc.Task(prompts=base.prompts, answers=[int(x.argmax()) for x in last],
                   wrong_answers=[int(x.argmin()) for x in last], corrupted=base.corrupted,
                   positions=base.positions, groups=[len(p) for p in base.prompts],
                   name="grouped-repeats")


def notebook_faithfulness(model, task: cc.Task, circuit: cc.Circuit) -> float:
    """The notebook procedure: per-template means from a cached reference run, then a hook
    that loops over layers' heads and template groups, and the metric from full logits."""
    enc = task.encode(model)
    L, H, dev = model.cfg.n_layers, model.cfg.n_heads, model.cfg.device
    with torch.inference_mode():
        _, cache = model.run_with_cache(enc.corrupted.to(dev),
                                        names_filter=lambda n: n.endswith("hook_z"))
    groups = enc.groups
    keep_at = {}  # (layer, head) -> position name or None
    for (layer, head), pos in circuit.placements():
        keep_at[(layer, head)] = pos

    def metric(logits):
        logits = logits.cpu()
        last = enc.lengths - 1
        final = logits[torch.arange(enc.n), last]
        return (final[torch.arange(enc.n), enc.answers] - final[torch.arange(enc.n), enc.wrong])

    def hook(z, hook):
        layer = int(hook.name.split(".")[1])
        ref = cache[hook.name]
        for g in groups.unique():
            rows = (groups == g).nonzero().flatten()
            mean = ref[rows].mean(0)  # [pos, head, d_head] over the template's prompts
            for h in range(H):
                pos = keep_at.get((layer, h), "ablate")
                if pos is None:
                    continue
                for r in rows:
                    if pos == "ablate":
                        z[r, :, h] = mean[:, h]
                    else:
                        keep = int(enc.positions[pos][r])
                        saved = z[r, keep, h].clone()
                        z[r, :, h] = mean[:, h]
                        z[r, keep, h] = saved
        return z

    with torch.inference_mode():
        full = metric(model(enc.tokens.to(dev))).mean()
        kept = metric(model.run_with_hooks(enc.tokens.to(dev), fwd_hooks=[
            (f"blocks.{l}.attn.hook_z", hook) for l in range(L)])).mean()
    return float(kept / full)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    model = cc.load_model(gpt2_shaped(args.layers), device=args.device)
    task = grouped_task(model)
    last = args.layers - 1  # with 4 layers: movers 3.0, 3.5, 2.7; early 0.1, 1.4
    circuit = cc.Circuit({"movers": [f"{last}.0", f"{last}.5", f"{max(last - 1, 0)}.7"],
                          "early": ["0.1", f"{min(1, last)}.4"]}, positions={"movers": "end"})
    nb_value = notebook_faithfulness(model, task, circuit)
    cc_value = cc.faithfulness(model, task, circuit, ablation="mean-by-template").value
    med, rate = interleaved({
        "nb": lambda: notebook_faithfulness(model, task, circuit),
        "cc": lambda: cc.faithfulness(model, task, circuit, ablation="mean-by-template"),
    }, args.device)
    t_nb, t_cc = med["nb"], med["cc"]
    enc = task.encode(model)
    tokens = float(enc.lengths.sum())
    # the notebook: reference run + clean run + ablated run, full logits everywhere
    nb_limit = 3 * forward_flops(model, tokens) / rate
    # circuitcheck: the reference run (stops before the unembedding) and 3 variants (circuit,
    # full, all ablated) that read two logits per prompt (W_U rows, not the unembedding)
    cc_limit = 4 * forward_flops(model, tokens, read_positions=0) / rate
    print(f"machine: {machine()}; device {args.device}; matmul rate {rate / 1e9:.1f} GFLOP/s\n")
    print("| measurement | notebook hook | circuitcheck | ratio | share of physical limit |")
    print("|---|---|---|---|---|")
    print(f"| faithfulness, mean-by-template, GPT-2-shaped {args.layers} layers, {enc.n} prompts "
          f"(values {nb_value:.4f} vs {cc_value:.4f}) | {t_nb:.3f} s | {t_cc:.3f} s | "
          f"{t_nb / t_cc:.1f}x | notebook {nb_limit / t_nb:.0%}, cc {cc_limit / t_cc:.0%} |")
    print()
    target("faithfulness (batched forwards), share of the physical limit", cc_limit / t_cc,
           0.70, "%")


if __name__ == "__main__":
    main()
