"""Head scores from attention patterns: previous-token, duplicate-token, induction, first-token
(BOS) and self (current-token).

Measured on sequences ``[BOS] r1 .. rn r1 .. rn`` of distinct random tokens (Olsson et al.
2022; TransformerLens's head detector uses the same diagonals):

- previous_token: mean attention from position i to i - 1 (i >= 2, so BOS is not the target);
- duplicate_token: mean attention from a token of the repeat to its earlier occurrence;
- induction: mean attention from a token of the repeat to the token that followed its earlier
  occurrence;
- bos: mean attention from every position i >= 1 to the first token (attention sinks);
- self: mean attention from every position i >= 1 to itself.

With ``task=`` the scores are measured on that task's own prompts instead
(``circuitcheck.measures.attention_positions.task_head_scores``).

Scores are means over sequences, with bootstrap intervals over sequences. Only the needed
diagonals are kept from each pattern (no full activation cache).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _settings
from ..errors import CircuitCheckError, did_you_mean
from ._heads_common import widen_unit
from ._scores import HeadScores

KINDS = ("previous_token", "duplicate_token", "induction", "bos", "self")
#: Other names of a kind: the first-token (BOS) head and the self (current-token) head.
ALIASES = {"first_token": "bos", "current_token": "self"}


def head_scores(model: Any, kind: str = "induction", *, n: int = 32, seq_len: int = 20,
                seed: int | None = None, tokens: Any = None, confidence: float = 0.95,
                batch_size: int | None = None, task: Any = None) -> HeadScores:
    """Score every head of ``model`` for ``kind`` on ``n`` repeated random sequences (or, with
    ``task``, on the task's own prompts)."""
    import torch

    from ..interventions._batching import rows_per_batch
    from ..interventions.ablation import no_logits
    from ..tasks._induction import content_token_ids

    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise CircuitCheckError(f"unknown head score {kind!r}{did_you_mean(kind, KINDS)}; "
                                f"use one of {list(KINDS)}")
    from .. import _validate

    if task is not None:
        from .attention_positions import task_head_scores

        return task_head_scores(model, task, kind, confidence=confidence,
                                seed=_settings.seed() if seed is None else seed,
                                batch_size=batch_size)
    n, seq_len = _validate.count(n, "n"), _validate.count(seq_len, "seq_len", minimum=2)
    confidence = _validate.open_unit(confidence, "confidence")
    seed = _settings.seed() if seed is None else _validate.seed(seed)
    pool = list(tokens) if tokens is not None else content_token_ids(model)
    if len(pool) < seq_len:
        raise CircuitCheckError(f"seq_len={seq_len} needs {seq_len} distinct tokens; the model "
                                f"has {len(pool)}")
    if 2 * seq_len + 1 > model.cfg.n_ctx:
        raise CircuitCheckError(f"seq_len={seq_len} makes sequences of {2 * seq_len + 1} tokens, "
                                f"longer than the model's context ({model.cfg.n_ctx})")
    gen = torch.Generator().manual_seed(seed)
    pool_t = torch.tensor(pool)
    r = torch.stack([pool_t[torch.randperm(len(pool), generator=gen)[:seq_len]] for _ in range(n)])
    bos = model.tokenizer.bos_token_id
    start = torch.full((n, 1), bos if bos is not None else int(pool[0]), dtype=torch.long)
    seqs = torch.cat([start, r, r], dim=1)  # [n, 2*seq_len + 1]
    P = seqs.shape[1]
    q = torch.arange(P)
    if kind == "previous_token":
        queries, keys = q[2:], q[2:] - 1
    elif kind in ("bos", "self"):
        queries = q[1:]
        keys = torch.zeros_like(queries) if kind == "bos" else queries
    elif kind == "duplicate_token":
        queries = q[1 + seq_len:]
        keys = queries - seq_len
    else:
        queries = q[1 + seq_len:]
        keys = queries - seq_len + 1
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.empty(n, L, H)
    bs = batch_size or rows_per_batch(model, P)
    device = model.cfg.device
    with torch.inference_mode():
        for s in range(0, n, bs):
            chunk = seqs[s:s + bs].to(device)

            def grab(pattern: torch.Tensor, hook: Any) -> None:
                layer = int(hook.name.split(".")[1])
                # pattern: [batch, head, query, key]
                diag = pattern[:, :, queries.to(pattern.device), keys.to(pattern.device)]
                out[s:s + chunk.shape[0], layer] = diag.float().mean(-1).cpu()

            model.run_with_hooks(chunk, fwd_hooks=[*((f"blocks.{l}.attn.hook_pattern", grab)
                                                     for l in range(L)), no_logits()],
                                 return_type=None)
    per_seq = out.numpy().astype(float)
    scores = per_seq.mean(0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(1000, n))
    boots = per_seq[idx].mean(1)  # [1000, L, H]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha], axis=0)
    lo, hi = widen_unit(scores, lo, hi, n, confidence, rate=False)  # attention weights lie in [0, 1]
    return HeadScores(kind, scores, lo, hi, per_seq, confidence)
