"""Build text prompts piece by piece and know the token index where each piece starts."""
from __future__ import annotations

import re
from typing import Any

from ..errors import TaskError, did_you_mean

_SLOT = re.compile(r"( ?\{[A-Z_]+\})")


def fill(model: Any, template: str, values: dict[str, str]) -> tuple[str, dict[str, list[int]]]:
    """Fill ``{SLOT}`` placeholders; return the text and the token index of every filled slot.

    A slot's value is inserted with the space before the placeholder (GPT-2 style ``" Mary"``),
    and must be exactly one token there, so positions stay aligned across prompts.
    """
    text = ""
    where: dict[str, list[int]] = {}
    for piece in _SLOT.split(template):
        if not piece:
            continue
        m = _SLOT.fullmatch(piece)
        if not m:
            text += piece
            continue
        lead = " " if piece.startswith(" ") else ""
        slot = piece.strip()[1:-1]
        if slot not in values:
            raise TaskError(
                f"template {template!r} has the slot {{{slot}}}, which this task does not fill; "
                f"its slots are {sorted('{' + k + '}' for k in values)}"
                f"{did_you_mean(slot, list(values))}: fix the template's slot name")
        before = _count(model, text)
        text += lead + values[slot]
        after = _count(model, text)
        if after - before != 1:
            raise TaskError(
                f"{values[slot]!r} (slot {slot}) is {after - before} tokens for this model in "
                f"{text!r}; use values that are single tokens (pass your own lists)"
            )
        where.setdefault(slot, []).append(before)
    return text, where


def _count(model: Any, text: str) -> int:
    if not text:
        bos = model.cfg.default_prepend_bos
        return 1 if bos else 0
    return int(model.to_tokens(text).shape[1])


def single_tokens(model: Any, words: list[str], lead: str = " ") -> tuple[list[str], list[str]]:
    """Split ``words`` into those that are one token with ``lead`` before them, and the rest."""
    from ._task import unknown_token_id

    unk = unknown_token_id(model)
    ok, bad = [], []
    for w in words:
        ids = model.to_tokens(lead + w, prepend_bos=False)[0].tolist()
        (ok if len(ids) == 1 and ids[0] != unk else bad).append(w)
    return ok, bad
