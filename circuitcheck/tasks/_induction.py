"""Induction tasks: repeated random tokens, and repeated natural text.

``[BOS] r1 .. rn r1 .. rk`` -> ``r(k+1)``: only a model that looks back to the earlier
occurrence of ``rk`` and copies what followed it can predict the answer. Positions: ``prev``
(the earlier occurrence of the current token) and ``target`` (the token that followed it).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..errors import TaskError
from ._task import Task


def content_token_ids(model: Any) -> list[int]:
    """Every token id of the model's tokenizer that is not a special token."""
    tok = model.tokenizer
    special = set(getattr(tok, "all_special_ids", []) or [])
    return [i for i in range(min(len(tok), model.cfg.d_vocab)) if i not in special]


def induction(model: Any, n: int = 64, *, seq_len: int = 20, seed: int = 0,
              tokens: Sequence[int] | None = None, text: str | None = None) -> Task:
    """``n`` repeated-random-token prompts (or, with ``text``, every cut of ``text text``).

    Random tokens are drawn without repetition within a sequence from ``tokens`` (default:
    every non-special token). The prompt starts with the tokenizer's BOS when it has one and is
    given as token ids. The wrong answer is a random other token of the sequence; the corrupted
    prompt keeps the first half and replaces the repeat by fresh random tokens.
    """
    if text is not None:
        return _repeated_text(model, text)
    if n < 1 or seq_len < 2:
        raise TaskError(f"need n >= 1 and seq_len >= 2, got n={n}, seq_len={seq_len}")
    pool = list(tokens) if tokens is not None else content_token_ids(model)
    if len(pool) < 2 * seq_len:
        raise TaskError(f"seq_len={seq_len} needs at least {2 * seq_len} distinct tokens; "
                        f"{len(pool)} are available. Use a shorter seq_len or pass tokens=")
    bos = model.tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
    start = [bos] if bos is not None else []
    rng = random.Random(seed)
    prompts, corrupted, answers, wrong = [], [], [], []
    prev, target = [], []
    for _ in range(n):
        seq = rng.sample(pool, 2 * seq_len)
        r, fresh = seq[:seq_len], seq[seq_len:]
        k = rng.randint(1, seq_len - 1)
        prompts.append(start + r + r[:k])
        corrupted.append(start + r + fresh[:k])
        answers.append(r[k])
        wrong.append(rng.choice([t for t in r if t != r[k]]))
        prev.append(len(start) + k - 1)
        target.append(len(start) + k)
    return Task(prompts=prompts, answers=answers, wrong_answers=wrong, corrupted=corrupted,
                positions={"prev": prev, "target": target}, name="induction",
                meta={"builder": "induction", "n": n, "seq_len": seq_len, "seed": seed})


def _repeated_text(model: Any, text: str) -> Task:
    """``text text[:k]`` -> the next word of ``text``, for every word cut k."""
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) < 3:
        raise TaskError(f"text {text!r} is {len(ids)} tokens; give at least 3")
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    prompts, answers, wrong, prev, target = [], [], [], [], []
    for k in range(1, len(ids)):
        prompts.append(bos + ids + ids[:k])
        answers.append(ids[k])
        wrong.append(ids[k - 1])
        prev.append(len(bos) + k - 1)
        target.append(len(bos) + k)
    return Task(prompts=prompts, answers=answers, wrong_answers=wrong,
                positions={"prev": prev, "target": target}, name="induction-text",
                meta={"builder": "induction", "text": text})
