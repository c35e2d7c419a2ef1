"""The notebook methods under the names issue 17 (and users) ask for.

Each is a thin call of the measurement that owns the method, with that method's own docstring:
``copying_scores`` -> :func:`ov.ov_copying` (with a task: copying of its names through the
full OV circuit) or :func:`ov.ov_eigen_scores` (without: the eigenvalue score);
``attention_to`` -> :func:`attention_positions.position_attention`; ``compensation`` ->
:func:`compensation.compensation` with ``positions`` for its ``at``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..circuit import parse_head
from ..errors import CircuitCheckError
from ._scores import HeadScores


def _head_mask(heads: Iterable[Any], model: Any) -> np.ndarray:
    """``[n_layers, n_heads]`` True at ``heads``; an out-of-range head is a clear error."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    keep = np.zeros((L, H), dtype=bool)
    for head in ([heads] if isinstance(heads, str) else heads):
        layer, h = parse_head(head)
        if not (0 <= layer < L and 0 <= h < H):
            raise CircuitCheckError(f"head {layer}.{h} is out of range for this model "
                                    f"({L} layers x {H} heads)")
        keep[layer, h] = True
    return keep


def _only(scores: HeadScores, heads: Iterable[Any] | None, model: Any) -> HeadScores:
    """``scores`` with every head outside ``heads`` set to NaN (all heads when None)."""
    if heads is None:
        return scores
    keep = _head_mask(heads, model)

    def cut(a: np.ndarray) -> np.ndarray:
        return np.where(keep, a, np.nan)

    return replace(scores, scores=cut(scores.scores), ci_low=cut(scores.ci_low),
                   ci_high=cut(scores.ci_high),
                   per_sequence=np.where(keep[None], scores.per_sequence, np.nan))


def copying_scores(model: Any, heads: Iterable[Any] | None = None, task: Any = None, *,
                   method: str | None = None, negative: bool = False, **kwargs: Any) -> HeadScores:
    """Per-head OV copying scores, ``[n_layers, n_heads]`` with intervals.

    ``method="names"`` (the default with a ``task``): the fraction of the task's names the
    head's full OV circuit puts in their own top-k logits (``negative=True``: of -W_OV, for
    negative name movers); ``method="eigen"`` (the default without a task): the eigenvalue
    copying score Σ Re(λ) / Σ |λ| of W_V W_O. ``heads``: report only these (others NaN).
    """
    from .ov import ov_copying, ov_eigen_scores

    method = method or ("names" if task is not None else "eigen")
    if method == "names":
        out = ov_copying(model, task, negative=negative, **kwargs)
    elif method == "eigen":
        if negative or task is not None:
            raise CircuitCheckError("method='eigen' reads the weights only: it takes no task "
                                    "and no negative= (a negative copier scores near -1)")
        out = ov_eigen_scores(model, **kwargs)
    else:
        raise CircuitCheckError(f"unknown copying method {method!r}; use 'names' or 'eigen'")
    return _only(out, heads, model)


def attention_to(model: Any, task: Any, heads: Iterable[Any] | None = None, source: str = "end",
                 targets: Sequence[Any] = ("IO", "S1", "S2"), weighted: bool = False,
                 **kwargs: Any) -> Any:
    """Mean attention (``weighted``: × ‖v‖) of every head from ``source`` to each target, per
    prompt of ``task``, with intervals; ``result["IO"]`` is that target's ``[n_layers,
    n_heads]`` :class:`HeadScores`. ``heads`` is checked against the model; every head is
    measured (it costs the same forward passes)."""
    from .attention_positions import position_attention

    if heads is not None:
        _head_mask(heads, model)
    return position_attention(model, task, to=targets, from_=source, weighted=weighted, **kwargs)


def compensation(model: Any, task: Any, heads: Any = None, *, ablate: Any,
                 positions: Any = "end", **kwargs: Any) -> Any:
    """How much ``heads`` (default: every head not ablated) raise their direct effect when
    ``ablate`` is ablated at ``positions``; see :func:`compensation.compensation`."""
    from . import compensation as _comp

    if heads is None:
        gone = {parse_head(h) for h in ([ablate] if isinstance(ablate, str) else ablate)}
        heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)
                 if (l, h) not in gone]
    return _comp.compensation(model, task, heads, ablate=ablate, at=positions, **kwargs)


__all__ = ["attention_to", "compensation", "copying_scores"]
