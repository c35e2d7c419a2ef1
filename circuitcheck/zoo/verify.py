"""Numerical verification of a zoo model's induction circuit through TransformerLens.

Loads the saved directory with ``TransformerBridge.boot_transformers`` +
``enable_compatibility_mode()`` (the path circuitcheck uses), then measures
per-head attention scores and top-1 copying accuracy under head ablations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

Head = tuple[int, int]
MIN_SCORE = 0.3  # a circuit head's own attention score must reach this (besides ranking first)


def load_bridge(path: str | Path) -> Any:
    """Boot a saved HF model dir as a TransformerLens bridge in compatibility mode.

    Falls back to ``enable_compatibility_mode(no_processing=True)`` when weight processing
    changes the model's log-probabilities by more than 1e-3 (``bridge.cc_processing`` says which).
    """
    import logging

    from transformer_lens.model_bridge import TransformerBridge

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    bridge = TransformerBridge.boot_transformers(str(path), device="cpu")
    bridge.eval()
    raw = _probe(bridge)
    bridge.enable_compatibility_mode()
    bridge.cc_processing = "folded"
    if float((_probe(bridge) - raw).abs().max()) > 1e-3:
        # TransformerLens 4.3's weight processing changes some checkpoints' predictions (seen on
        # the Llama-based induction-2l): measure the unprocessed model instead, as
        # circuitcheck.load_model does.
        bridge = TransformerBridge.boot_transformers(str(path), device="cpu")
        bridge.eval()
        bridge.enable_compatibility_mode(no_processing=True)
        bridge.cc_processing = "unprocessed"
    return bridge


def _probe(bridge: Any) -> Any:
    """Log-probabilities on a short fixed sequence (same probe as circuitcheck.load_model)."""
    import torch

    vocab = bridge.cfg.d_vocab
    ids = torch.tensor([[int(i * 7919) % vocab for i in range(1, 9)]])
    with torch.no_grad():
        return bridge(ids).float().log_softmax(-1)


def head_scores(bridge: Any, tokens: Any, seg_len: int) -> dict[str, list[list[float]]]:
    """Previous-token, induction and duplicate-token scores per head (n_layers x n_heads).

    ``tokens`` is a ``[batch, 2 * seg_len + 1]`` tensor ``[BOS] r r``.
    previous_token: mean attention from position i to i-1 (i >= 1).
    induction: mean attention from a second-copy token to the position right
    after its earlier occurrence. duplicate_token: attention to that earlier occurrence.
    """
    import torch

    n_layers = bridge.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    seq = tokens.shape[1]
    q_prev = torch.arange(1, seq)
    q_second = torch.arange(seg_len + 1, 2 * seg_len + 1)
    scores: dict[str, list[list[float]]] = {"previous_token": [], "induction": [], "duplicate_token": []}
    for l in range(n_layers):
        pat = cache[names[l]].float()  # [batch, head, q, k]
        scores["previous_token"].append(pat[:, :, q_prev, q_prev - 1].mean((0, 2)).tolist())
        scores["induction"].append(pat[:, :, q_second, q_second - seg_len + 1].mean((0, 2)).tolist())
        scores["duplicate_token"].append(pat[:, :, q_second, q_second - seg_len].mean((0, 2)).tolist())
    return {k: [[round(v, 4) for v in row] for row in rows] for k, rows in scores.items()}


def _z_hooks(bridge: Any, heads: Iterable[Head], mode: str, tokens: Any) -> list[tuple[str, Callable]]:
    """Hooks on ``blocks.{l}.attn.hook_z`` that zero- or mean-ablate the given heads."""
    import torch

    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    means: dict[int, Any] = {}
    if mode == "mean" and by_layer:
        names = [f"blocks.{l}.attn.hook_z" for l in by_layer]
        with torch.no_grad():
            _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
        means = {l: cache[f"blocks.{l}.attn.hook_z"].mean(0, keepdim=True) for l in by_layer}

    def make(layer: int, hs: list[int]) -> Callable:
        def hook(z: Any, hook: Any = None) -> Any:
            z = z.clone()
            if mode == "zero":
                z[:, :, hs, :] = 0.0
            else:
                z[:, :, hs, :] = means[layer][:, :, hs, :].expand(z.shape[0], -1, -1, -1)
            return z

        return hook

    return [(f"blocks.{l}.attn.hook_z", make(l, hs)) for l, hs in by_layer.items()]


def copying_accuracy(bridge: Any, tokens: Any, seg_len: int, ablate: Iterable[Head] = (), mode: str = "zero") -> float:
    """Top-1 accuracy of predicting ``r2..rL`` in the second copy, with ``ablate`` heads ablated."""
    import torch

    hooks = _z_hooks(bridge, list(ablate), mode, tokens)
    with torch.no_grad():
        logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks) if hooks else bridge(tokens)
    pos = torch.arange(seg_len + 1, 2 * seg_len)
    pred = logits[:, pos, :].argmax(-1)
    return round(float((pred == tokens[:, pos + 1]).float().mean()), 4)


def bridge_hf_max_logprob_diff(bridge: Any, path: str | Path, tokens: Any) -> float:
    """Max |log-softmax difference| between the bridge and the plain HF model (``AutoModelForCausalLM``; should be ~1e-5)."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    with torch.no_grad():
        a, b = bridge(tokens).log_softmax(-1), hf(tokens).logits.log_softmax(-1)
    return float((a - b).abs().max())


def all_heads(bridge: Any) -> list[Head]:
    """Every (layer, head) pair of the model."""
    return [(l, h) for l in range(bridge.cfg.n_layers) for h in range(bridge.cfg.n_heads)]


def verify_induction(path: str | Path, circuit: dict[str, list[Head]], eval_cfg: dict[str, Any]) -> dict[str, Any]:
    """Scores, copying accuracies and ablation checks for an induction circuit.

    ``circuit`` maps role -> list of (layer, head); ``eval_cfg`` has ``n``,
    ``seed``, ``seg_len`` for :func:`~circuitcheck.zoo.data.repeated_tokens_batch`.
    Returns a dict ready to merge into ``card.json``.
    """
    import torch

    from .data import repeated_tokens_batch, word_token_ids

    bridge = load_bridge(path)
    seqs = repeated_tokens_batch(path, eval_cfg["n"], eval_cfg["seed"], eval_cfg["seg_len"])
    tokens = torch.tensor(seqs)
    seg_len = eval_cfg["seg_len"]
    known = [tuple(h) for hs in circuit.values() for h in hs]
    others = [h for h in all_heads(bridge) if h not in known]
    acc = {
        "full": copying_accuracy(bridge, tokens, seg_len),
        "circuit_only_zero": copying_accuracy(bridge, tokens, seg_len, others, "zero"),
        "circuit_only_mean": copying_accuracy(bridge, tokens, seg_len, others, "mean"),
        "circuit_ablated_zero": copying_accuracy(bridge, tokens, seg_len, known, "zero"),
        "circuit_ablated_mean": copying_accuracy(bridge, tokens, seg_len, known, "mean"),
        "chance": round(1.0 / len(word_token_ids(path)), 4),
    }
    single = [
        [copying_accuracy(bridge, tokens, seg_len, [(l, h)], "zero") for h in range(bridge.cfg.n_heads)]
        for l in range(bridge.cfg.n_layers)
    ]
    scores = head_scores(bridge, tokens, seg_len)
    diff = bridge_hf_max_logprob_diff(bridge, path, tokens)
    return {
        "bridge_processing": bridge.cc_processing,
        "scores": scores,
        "copying_accuracy": acc,
        "single_head_zero_ablation_accuracy": single,
        "bridge_vs_hf_max_logprob_diff": float(f"{diff:.2e}"),
    }


def check_induction(result: dict[str, Any], circuit: dict[str, list[Head]]) -> dict[str, bool]:
    """Pass/fail checks for the card: circuit sufficiency (>= 90% of full accuracy),
    necessity (ablated -> near chance: <= max(0.1, 3 x chance)), and the circuit
    heads ranking first on their attention score (within their layer and over all heads)
    with a score of at least ``MIN_SCORE``."""
    acc, sc = result["copying_accuracy"], result["scores"]

    def ranks_first(score: str, head: Head, overall: bool) -> bool:
        l, h = head
        vals = [v for row in sc[score] for v in row] if overall else sc[score][l]
        return sc[score][l][h] == max(vals) and sum(v == sc[score][l][h] for v in vals) == 1

    full = acc["full"]
    checks = {
        "circuit_only_zero_retains_90pct": acc["circuit_only_zero"] >= 0.9 * full,
        "circuit_only_mean_retains_90pct": acc["circuit_only_mean"] >= 0.9 * full,
        "circuit_ablated_near_chance": acc["circuit_ablated_zero"] <= max(0.1, 3 * acc["chance"]),
        "bridge_matches_hf": result["bridge_vs_hf_max_logprob_diff"] < 1e-3,
    }
    for role, score in (("previous token", "previous_token"), ("induction", "induction")):
        for overall in (False, True):
            name = f"{score}_head_ranks_first_{'overall' if overall else 'in_layer'}"
            checks[name] = all(ranks_first(score, tuple(h), overall) for h in circuit[role])
        checks[f"{score}_score_at_least_{MIN_SCORE}"] = all(sc[score][l][h] >= MIN_SCORE for l, h in circuit[role])
    return checks
