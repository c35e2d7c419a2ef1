"""Build, verify and document the zoo models: ``python -m circuitcheck.zoo build NAME``.

Every build is deterministic (fixed seeds, CPU, ``torch.use_deterministic_algorithms``,
a fixed thread count), writes the HF model dir (safetensors + tokenizer), then
reloads it through TransformerLens (``TransformerBridge.boot_transformers`` +
``enable_compatibility_mode``) to measure the circuit, and writes the numbers to
``card.json`` and a human-readable ``README.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import KNOWN_MODELS, ZOO_DIR
from .data import N_WORDS, SPECIAL_TOKENS, make_tokenizer, repeated_tokens_batch, word_token_ids

__all__ = ["build", "main", "repeated_tokens_batch", "word_token_ids", "EVAL"]

SEEDS = {"planted": 0, "induction-2l": 0}
EVAL = {"n": 200, "seed": 1234, "seg_len": 20, "distinct": True}
"""Eval sequences: ``repeated_tokens_batch(model_dir, n, seed, seg_len)`` -> ``[BOS] r1..r20 r1..r20``."""
N_THREADS = 2
THREADS = {"planted": N_THREADS, "induction-2l": 1}
"""torch threads per build (induction-2l trains on one thread)."""


def _setup_torch(seed: int, threads: int = N_THREADS) -> None:
    """Seed and pin torch for reproducible CPU builds."""
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformer_lens
    import transformers

    return {m.__name__: getattr(m, "__version__", "?") for m in (torch, transformers, tokenizers, transformer_lens)}


def _save_hf(model: Any, out_dir: Path) -> None:
    """Write the model (safetensors) and the shared word-level tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("card.json", "README.md"):
        (out_dir / stale).unlink(missing_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    make_tokenizer(N_WORDS, _n_ctx(model.config)).save_pretrained(str(out_dir))


def _n_ctx(c: Any) -> int:
    return c.n_positions if hasattr(c, "n_positions") else c.max_position_embeddings


def _architecture(model: Any) -> dict[str, Any]:
    c = model.config
    if c.model_type == "llama":
        return {
            "class": "LlamaForCausalLM",
            "n_layers": c.num_hidden_layers,
            "n_heads": c.num_attention_heads,
            "d_model": c.hidden_size,
            "d_head": c.head_dim,
            "n_ctx": c.max_position_embeddings,
            "vocab_size": c.vocab_size,
            "d_mlp": c.intermediate_size,
            "mlp": "present but zeroed (down_proj = 0) and frozen: attention-only",
            "positions": f"rotary (RoPE, theta={c.rope_parameters['rope_theta'] if getattr(c, 'rope_parameters', None) else c.rope_theta}), no learned position embeddings",
            "norm": "RMSNorm, all weights frozen at 1",
            "tied_embeddings": bool(c.tie_word_embeddings),
            "n_parameters": sum(p.numel() for p in model.parameters()),
        }
    return {
        "class": "GPT2LMHeadModel",
        "n_layers": c.n_layer,
        "n_heads": c.n_head,
        "d_model": c.n_embd,
        "d_head": c.n_embd // c.n_head,
        "n_ctx": c.n_positions,
        "vocab_size": c.vocab_size,
        "d_mlp": c.n_inner,
        "mlp": "present but zeroed (c_fc, c_proj weights and biases = 0): attention-only",
        "tied_embeddings": bool(c.tie_word_embeddings),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }


def _vocab_info() -> dict[str, Any]:
    return {
        "special_tokens": {"pad": SPECIAL_TOKENS[0], "bos": SPECIAL_TOKENS[1], "eos": SPECIAL_TOKENS[2], "unk": SPECIAL_TOKENS[3]},
        "special_token_ids": {t: i for i, t in enumerate(SPECIAL_TOKENS)},
        "words": f"t0 .. t{N_WORDS - 1} (ids {len(SPECIAL_TOKENS)} .. {len(SPECIAL_TOKENS) + N_WORDS - 1})",
        "tokenizer": "WordLevel + WhitespaceSplit; does not add BOS itself (TransformerLens prepends it)",
    }


def _eval_info() -> dict[str, Any]:
    return {
        **EVAL,
        "generator": "circuitcheck.zoo.data.repeated_tokens_batch(model_dir, n, seed, seg_len)",
        "format": "[<bos>] r1..rL r1..rL, r sampled without replacement from the word tokens",
        "accuracy_positions": "predict tokens[p+1] at p = L+1 .. 2L-1 (second copy, r2..rL)",
        "score_definitions": {
            "previous_token": "mean attention from position i to i-1, i >= 1",
            "induction": "mean attention from second-copy position i to i-L+1 (right after the earlier occurrence)",
            "duplicate_token": "mean attention from second-copy position i to i-L (the earlier occurrence)",
        },
        "ablations": "hook_z of the listed heads set to 0 (zero) or to its per-position mean over the eval batch (mean)",
        "chance": "1 / number of word tokens",
    }


def _verify(out_dir: Path, circuit: dict[str, list[tuple[int, int]]]) -> dict[str, Any]:
    from .verify import check_induction, verify_induction

    print("  verifying through TransformerBridge ...", flush=True)
    result = verify_induction(out_dir, circuit, EVAL)
    if result["bridge_processing"] == "folded":
        del result["bridge_processing"]  # the default; keeps the planted card unchanged
    result["checks"] = check_induction(result, circuit)
    return result


def _build_planted(out_dir: Path, seed: int) -> dict[str, Any]:
    from . import planted

    print("  setting weights by hand (no training) ...", flush=True)
    model = planted.build_model(seed)
    _save_hf(model, out_dir)
    circuit = {"previous token": [planted.PREV_HEAD], "induction": [planted.IND_HEAD]}
    return {
        "description": (
            "Hand-set 2-layer x 4-head GPT-2 (no training) implementing in-context copying "
            "([BOS] r1..rn r1..rn -> predicts r_{i+1} after r_i in the second copy) with exactly one "
            "previous-token head (L0H2) and one induction head (L1H1). Ground truth by construction."
        ),
        "architecture": _architecture(model),
        "circuit": {k: [list(h) for h in v] for k, v in circuit.items()},
        "distractors": {
            "L0H0": "attends to <bos> (sink), random OV into an unread subspace",
            "L0H1": "uniform attention over the prefix, random OV into an unread subspace",
            "L0H3": "random QK and OV (OV writes only into the unread subspace)",
            "L1H0": "duplicate-token head (attends to equal tokens, itself included), random OV into the unread subspace",
            "L1H2": "random QK and OV (OV writes only into the unread subspace)",
            "L1H3": "attends to <bos> (sink), random OV into the unread subspace",
        },
        "construction": {
            "residual_subspaces": {k: list(v) for k, v in planted._sl.items()},
            "note": "logical coordinates embedded by a seeded random orthonormal basis orthogonal to the all-ones vector (LayerNorm-safe)",
            "position_frequencies": list(planted.POS_FREQS),
            "qk_gains": planted.QK_GAIN,
            "ov_gain": planted.OV_GAIN,
            "unembed_gain": planted.UNEMBED_GAIN,
        },
        "head_weight_norms": planted.head_norms(model),
        **_verify(out_dir, circuit),
    }


def _identify_induction_circuit(out_dir: Path) -> dict[str, list[tuple[int, int]]]:
    """Previous-token head = argmax prev-token score in layer 0; induction head = argmax induction score in layer 1."""
    import torch

    from .verify import head_scores, load_bridge

    bridge = load_bridge(out_dir)
    tokens = torch.tensor(repeated_tokens_batch(out_dir, EVAL["n"], EVAL["seed"], EVAL["seg_len"]))
    sc = head_scores(bridge, tokens, EVAL["seg_len"])
    prev = max(range(len(sc["previous_token"][0])), key=lambda h: sc["previous_token"][0][h])
    ind = max(range(len(sc["induction"][1])), key=lambda h: sc["induction"][1][h])
    return {"previous token": [(0, prev)], "induction": [(1, ind)]}


def _build_induction(out_dir: Path, seed: int) -> dict[str, Any]:
    from . import induction

    print(f"  training ({induction.TRAIN['steps']} steps, batch {induction.TRAIN['batch']}) ...", flush=True)
    t0 = time.time()
    model = induction.train(seed)
    train_s = round(time.time() - t0, 1)
    _save_hf(model, out_dir)
    circuit = _identify_induction_circuit(out_dir)
    (pl, ph), (il, ih) = circuit["previous token"][0], circuit["induction"][0]
    return {
        "description": (
            "2-layer x 4-head attention-only Llama (RoPE) trained on repeated random word tokens with random "
            "segment and gap lengths (loss on the second copy). Heads identified after training by attention "
            f"scores: previous-token head L{pl}H{ph}, induction head L{il}H{ih}; see `checks` for whether "
            "they form a standard induction circuit."
        ),
        "architecture": _architecture(model),
        "circuit": {k: [list(h) for h in v] for k, v in circuit.items()},
        "circuit_identification": "layer-0 head with the highest previous_token score; layer-1 head with the highest induction score",
        "training": {
            **induction.TRAIN,
            "optimizer": "AdamW(betas=(0.9, 0.98)), grad clip 1.0, linear warmup + cosine decay to 10%",
            "data": "packed repeat units [<bos>] (f1 seg f2 seg)+ tail with random seg length U[min_seg_len, max_seg_len] "
            "and gaps U[0, max_gap], distinct tokens per sequence, loss on r2..rL of each second copy",
            "regulariser": "head_penalty * sum over heads of (||W_O^h||_F + 1e-4) ** head_penalty_power "
            "(concave group penalty: concentrates each role on one head)",
            "train_seconds_on_build_machine": train_s,
        },
        "head_output_norms": induction.head_output_norms(model),
        **_verify(out_dir, circuit),
    }


BUILDERS: dict[str, Callable[[Path, int], dict[str, Any]]] = {
    "planted": _build_planted,
    "induction-2l": _build_induction,
}
#: Models whose module builds, checks and writes the card itself (``module.build(out_dir)``).
SELF_BUILT = {"ioi-toy": "ioi_toy"}
assert (*BUILDERS, *SELF_BUILT) == KNOWN_MODELS


def _fmt_heads(heads: list[list[int]]) -> str:
    return ", ".join(f"L{l}H{h} (layer {l}, head {h})" for l, h in heads)


def _table(rows: list[list[float]]) -> str:
    n = len(rows[0])
    lines = ["| layer | " + " | ".join(f"H{h}" for h in range(n)) + " |", "|---" * (n + 1) + "|"]
    lines += [f"| {l} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for l, row in enumerate(rows)]
    return "\n".join(lines)


def _arch_line(arch: dict[str, Any]) -> str:
    if arch["class"] == "LlamaForCausalLM":
        return (
            f"Architecture: Llama (`LlamaForCausalLM`), {arch['n_layers']} layers x {arch['n_heads']} heads, "
            f"d_model={arch['d_model']}, d_head={arch['d_head']}, n_ctx={arch['n_ctx']}, vocab={arch['vocab_size']}, "
            f"rotary positions (RoPE), RMSNorm weights fixed at 1, MLPs zeroed (attention-only), "
            f"{'tied' if arch['tied_embeddings'] else 'untied'} embeddings, {arch['n_parameters']} parameters.\n"
        )
    return (
        f"Architecture: GPT-2, {arch['n_layers']} layers x {arch['n_heads']} heads, d_model={arch['d_model']}, "
        f"d_head={arch['d_head']}, n_ctx={arch['n_ctx']}, vocab={arch['vocab_size']}, MLPs zeroed "
        f"(attention-only), untied embeddings, {arch['n_parameters']} parameters.\n"
    )


def render_readme(card: dict[str, Any]) -> str:
    """Markdown model card from ``card.json`` contents."""
    arch, acc = card["architecture"], card["copying_accuracy"]
    parts = [
        f"# circuitcheck zoo: `{card['name']}`\n",
        card["description"] + "\n",
        "## Circuit (ground truth)\n",
        *[f"- **{role}**: {_fmt_heads(heads)}" for role, heads in card["circuit"].items()],
        "",
        _arch_line(arch),
        "Vocabulary: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, words `t0`..`t59` = ids 4..63. "
        "Prompts are space-separated words (`\"t5 t17 t5\"`); the tokenizer does not add `<bos>` "
        "(TransformerLens prepends it).\n",
    ]
    if "distractors" in card:
        parts += ["## Distractor heads\n", *[f"- {h}: {d}" for h, d in card["distractors"].items()], ""]
    if "training" in card:
        t = card["training"]
        parts += [
            "## Training\n",
            f"{t['steps']} steps, batch {t['batch']}, lr {t['lr']}, seed {card['build']['seed']}. Data: {t['data']}.\n",
        ]
    ev = card["eval"]
    parts += [
        "## Verification\n",
        f"Loaded through `TransformerBridge.boot_transformers(dir)` + `enable_compatibility_mode()`. "
        f"Eval: {ev['n']} sequences `[<bos>] r1..r{ev['seg_len']} r1..r{ev['seg_len']}` "
        f"(`repeated_tokens_batch(dir, n={ev['n']}, seed={ev['seed']}, seg_len={ev['seg_len']})`).\n",
        "### Top-1 copying accuracy on the second copy\n",
        "| condition | accuracy |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in acc.items()],
        "",
        "`circuit_only_*`: all heads outside the circuit ablated (hook_z zero / mean over batch); "
        "`circuit_ablated_*`: the circuit heads ablated.\n",
    ]
    for key in ("previous_token", "induction", "duplicate_token"):
        parts += [f"### {key} score\n", _table(card["scores"][key]), ""]
    parts += ["### Accuracy with a single head zero-ablated\n", _table(card["single_head_zero_ablation_accuracy"]), ""]
    parts += ["### Checks\n", *[f"- {k}: {'PASS' if v else 'FAIL'}" for k, v in card["checks"].items()], ""]
    parts += [f"Rebuild: `{card['build']['command']}`\n"]
    return "\n".join(parts)


def build(name: str, out: str | Path | None = None) -> Path:
    """Build model ``name`` into ``out/name`` (default :data:`ZOO_DIR`), verify it, write card + README."""
    out_dir = Path(out if out is not None else ZOO_DIR) / name
    if name in SELF_BUILT:
        import importlib

        print(f"[zoo] building {name!r} -> {out_dir}", flush=True)
        return importlib.import_module(f".{SELF_BUILT[name]}", __package__).build(out_dir)
    if name not in BUILDERS:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    seed = SEEDS[name]
    print(f"[zoo] building {name!r} -> {out_dir}", flush=True)
    t0 = time.time()
    _setup_torch(seed, THREADS[name])
    card = {"name": name, **BUILDERS[name](out_dir, seed)}
    card["vocab"] = _vocab_info()
    card["eval"] = _eval_info()
    card["build"] = {"seed": seed, "command": f"python -m circuitcheck.zoo build {name}", "threads": THREADS[name], "versions": _versions()}
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(render_readme(card), encoding="utf-8")
    acc = card["copying_accuracy"]
    print(f"[zoo] {name}: circuit {card['circuit']}  accuracy full={acc['full']} "
          f"circuit_only_zero={acc['circuit_only_zero']} circuit_ablated_zero={acc['circuit_ablated_zero']}", flush=True)
    failed = [k for k, v in card["checks"].items() if not v]
    print(f"[zoo] {name}: {'all checks passed' if not failed else 'FAILED checks: ' + ', '.join(failed)} "
          f"({time.time() - t0:.0f}s)", flush=True)
    return out_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m circuitcheck.zoo",
        description="Build or list the circuitcheck zoo: tiny GPT-2 models with known circuits "
        "(HF format + card.json + README.md).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (and verify) a zoo model", description="Build a model deterministically on CPU, "
                       "verify its circuit through TransformerLens and write card.json / README.md.")
    b.add_argument("name", choices=[*KNOWN_MODELS, "all"], help="model to build, or 'all'")
    b.add_argument("--out", metavar="DIR", default=None,
                   help=f"parent directory; the model is written to DIR/NAME (default: {ZOO_DIR})")
    sub.add_parser("list", help="list buildable models and whether they are built")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 if a build fails its checks)."""
    args = _parser().parse_args(argv)
    if args.cmd == "list":
        for name in KNOWN_MODELS:
            built = (ZOO_DIR / name / "config.json").is_file()
            print(f"{name:14s} {'built' if built else 'not built'}  {ZOO_DIR / name}")
        return 0
    names = list(KNOWN_MODELS) if args.name == "all" else [args.name]
    status = 0
    for name in names:
        out_dir = build(name, args.out)
        card = json.loads((out_dir / "card.json").read_text(encoding="utf-8"))
        status |= int(not all(card.get("checks", {}).values()))  # self-built ones raise instead
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
