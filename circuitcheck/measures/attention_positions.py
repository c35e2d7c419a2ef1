"""Attention analyses on a task's own prompts, as the IOI notebook does them.

- :func:`position_attention`: per head, the mean attention from a named position (``end``) to
  named positions (``IO``, ``S1``, ``S2``, ``S1+1``, any of the task's, or ``first`` = the first
  token, ``self`` = the query's own token, ``prev`` = the one before it), on the clean or the
  corrupted prompts, with a bootstrap interval over prompts. A target may be a list (the
  attention summed over its distinct positions). ``weighted=True`` weights each attention
  weight by the norm of the value vector it reads, α_ij·‖v_j‖ (the notebook's norm section;
  grouped-query models use each query head's own k/v head).
- :func:`task_head_scores`: head kinds measured on any task's prompts: ``bos`` (attention to
  the first token), ``self`` (to the current token), ``previous_token``, ``duplicate_token``
  (to earlier occurrences of the same token), ``induction`` (to tokens that followed earlier
  occurrences). Each prompt's score is the mean over its queries (positions >= 1; >= 2 for
  previous_token; for duplicate/induction only queries that have such a key) of the attention
  mass on the kind's keys; prompts without any such query are left out.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..circuit import format_head, parse_head
from ..errors import CircuitCheckError, TaskError, did_you_mean
from ._heads_common import boot_heads, per_query_head, widen_unit
from ._result import ResultProtocol, jsonable
from ._scores import HeadScores

if TYPE_CHECKING:  # pragma: no cover
    import torch

SPECIAL = ("first", "self", "prev")
TASK_KINDS = ("bos", "self", "previous_token", "duplicate_token", "induction")


def _label(target: Any) -> str:
    return target if isinstance(target, str) else "+".join(target) if len(target) > 1 \
        else target[0]


@dataclass(frozen=True, eq=False)
class PositionAttention(ResultProtocol):
    """Mean attention (or α·‖v‖) of every head from ``source`` to each of ``targets``:
    ``values[layer, head, k]`` with interval arrays and ``per_prompt[n, layer, head, k]``."""

    source: str
    targets: tuple[str, ...]
    values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    per_prompt: np.ndarray = field(repr=False)
    weighted: bool = False
    prompts: str = "clean"
    confidence: float = 0.95

    @property
    def n(self) -> int:
        return int(self.per_prompt.shape[0])

    @property
    def what(self) -> str:
        return "attention × ‖v‖" if self.weighted else "attention"

    def _k(self, target: Any) -> int:
        label = _label([target] if isinstance(target, str) else list(target))
        if label not in self.targets:
            raise CircuitCheckError(f"no target {label!r}{did_you_mean(label, self.targets)}; "
                                    f"measured {list(self.targets)}")
        return self.targets.index(label)

    def of(self, target: Any) -> HeadScores:
        """The [layer, head] scores for one target, as :class:`HeadScores` (ranking, top)."""
        k = self._k(target)
        return HeadScores(f"{self.what} {self.source}->{self.targets[k]}", self.values[..., k],
                          self.ci_low[..., k], self.ci_high[..., k], self.per_prompt[..., k],
                          self.confidence)

    def __getitem__(self, key: Any) -> Any:
        """``result["IO"]``: that target's scores (``of``); ``result["9.9", "IO"]``: one value."""
        if not (isinstance(key, tuple) and len(key) == 2):
            return self.of(key)
        try:
            head, target = parse_head(key[0]), key[1]
        except CircuitCheckError:  # a target of several positions, e.g. ("S1", "S2")
            return self.of(key)
        layer, h = parse_head(head)
        return float(self.values[layer, h, self._k(target)])

    def table(self):
        import pandas as pd

        L, H, K = self.values.shape
        return pd.DataFrame([{"head": f"{l}.{h}", "from": self.source, "to": self.targets[k],
                              "value": float(self.values[l, h, k]),
                              "ci_low": float(self.ci_low[l, h, k]),
                              "ci_high": float(self.ci_high[l, h, k])}
                             for l in range(L) for h in range(H) for k in range(K)])

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"from": self.source, "to": list(self.targets), "values": self.values,
                         "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n,
                         "weighted": self.weighted, "prompts": self.prompts,
                         "confidence": self.confidence})

    def summary(self) -> str:
        parts = []
        for k, t in enumerate(self.targets):
            best = self.of(t).top(1)[0]
            parts.append(f"{t}: {format_head(best)} {self.values[best][k]:.2f}")
        return (f"{self.what} from {self.source} on {self.n} {self.prompts} prompts; strongest "
                + ", ".join(parts))


def _prompt_set(task: Any, enc: Any, prompts: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    if prompts == "clean":
        return enc.tokens, enc.lengths
    if prompts == "corrupted":
        if enc.corrupted is None:
            raise TaskError("prompts='corrupted' needs a task with corrupted prompts")
        return enc.corrupted, enc.corrupted_lengths
    raise CircuitCheckError(f"prompts must be 'clean' or 'corrupted', got {prompts!r}")


def _position(task: Any, enc: Any, name: str, lengths: "torch.Tensor") -> "torch.Tensor":
    """[N] index of a named position; ``end`` is each prompt's own last token."""
    if name == "end":
        return lengths - 1
    task.check_position(name)
    idx = enc.positions[name]
    bad = (idx >= lengths).nonzero().flatten().tolist()
    if bad:
        raise TaskError(f"position {name!r} of prompt {bad[0]} is past the end of its corrupted "
                        "prompt; the corrupted prompts must keep the clean prompts' positions")
    return idx


def run_patterns(model: Any, tokens: "torch.Tensor", lengths: "torch.Tensor",
                 take: Callable[[int, "torch.Tensor", "torch.Tensor | None", "torch.Tensor"],
                                None], *, with_v: bool = False,
                 batch_size: int | None = None) -> None:
    """Run every prompt once; ``take(layer, pattern [b, H, P, P], v [b, P, H, dh] | None, rows)``
    sees each layer's attention pattern (and per-query-head values) of the batch ``rows``."""
    import torch

    from ..interventions._batching import rows_per_batch
    from ..interventions.ablation import no_logits

    L, H = model.cfg.n_layers, model.cfg.n_heads
    bs = batch_size or rows_per_batch(model, tokens.shape[1])
    with torch.inference_mode():
        for s in range(0, tokens.shape[0], bs):
            rows = torch.arange(s, min(s + bs, tokens.shape[0]))
            P = int(lengths[rows].max())
            vs: dict[int, torch.Tensor] = {}

            def save_v(v: torch.Tensor, hook: Any) -> None:
                vs[int(hook.name.split(".")[1])] = per_query_head(v, H, 2)

            def grab(pattern: torch.Tensor, hook: Any) -> None:
                layer = int(hook.name.split(".")[1])
                take(layer, pattern.float(), vs.get(layer), rows)

            hooks = [(f"blocks.{l}.attn.hook_pattern", grab) for l in range(L)]
            if with_v:
                hooks = [(f"blocks.{l}.attn.hook_v", save_v) for l in range(L)] + hooks
            model.run_with_hooks(tokens[rows, :P].to(model.cfg.device),
                                 fwd_hooks=hooks + [no_logits()], return_type=None)


def position_attention(model: Any, task: Any, to: Any = ("IO", "S1", "S2"), *,
                       from_: str = "end", weighted: bool = False, prompts: str = "clean",
                       confidence: float = 0.95, seed: int = 0,
                       batch_size: int | None = None) -> PositionAttention:
    """Mean attention of every head from ``from_`` to each target of ``to`` (see the module
    docstring), with bootstrap intervals over prompts."""
    import torch

    from .. import _validate

    confidence = _validate.open_unit(confidence, "confidence")
    enc = task.encode(model)
    tokens, lengths = _prompt_set(task, enc, prompts)
    targets = [[t] if isinstance(t, str) else list(t) for t in ([to] if isinstance(to, str)
                                                                 else to)]
    if not targets or not all(targets):
        raise CircuitCheckError("name at least one target position in to=")
    if from_ in SPECIAL:
        raise CircuitCheckError(f"from_ must be a position of the task, not {from_!r}")
    q = _position(task, enc, from_, lengths)
    N, P = tokens.shape
    masks = torch.zeros(len(targets), N, P, dtype=torch.bool)  # which keys each target reads
    rows = torch.arange(N)
    for k, group in enumerate(targets):
        for name in group:
            if name == "first":
                idx = torch.zeros(N, dtype=torch.long)
            elif name == "self":
                idx = q
            elif name == "prev":
                idx = (q - 1).clamp_min(0)
            else:
                idx = _position(task, enc, name, lengths)
            masks[k, rows, idx] = True
    last = (masks * torch.arange(P)).amax(-1)  # [K, N] the latest key of each target
    future = last > q[None]
    if bool(future.any()):
        k, i = (int(x) for x in future.nonzero()[0])
        raise TaskError(f"target {_label(targets[k])!r} comes after {from_!r} in prompt {i}; "
                        "attention only reads earlier tokens")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.zeros(N, L, H, len(targets))

    def take(layer: int, pattern: torch.Tensor, v: torch.Tensor | None, rws: torch.Tensor) -> None:
        Pb = pattern.shape[-1]
        b = torch.arange(len(rws), device=pattern.device)
        row = pattern[b, :, q[rws].to(pattern.device)]  # [b, H, Pb]
        if v is not None:
            row = row * v.float().norm(dim=-1).transpose(1, 2)  # [b, H, Pb] α_ij ‖v_j‖
        m = masks[:, rws, :Pb].to(pattern.device).float()  # [K, b, Pb]
        out[rws, layer] = torch.einsum("bhp,kbp->bhk", row, m).cpu()

    run_patterns(model, tokens, lengths, take, with_v=weighted, batch_size=batch_size)
    per = out.numpy().astype(float)
    mean, lo, hi = boot_heads(per, confidence, seed)
    if not weighted:  # attention weights lie in [0, 1]: never a [1, 1] interval
        lo, hi = widen_unit(mean, lo, hi, np.isfinite(per).sum(0), confidence, rate=False)
    return PositionAttention(from_, tuple(_label(t) for t in targets), mean, lo, hi, per,
                             bool(weighted), prompts, confidence)


def task_head_scores(model: Any, task: Any, kind: str, *, prompts: str = "clean",
                     confidence: float = 0.95, seed: int = 0,
                     batch_size: int | None = None) -> HeadScores:
    """Head scores of ``kind`` (one of ``TASK_KINDS``) on the task's own prompts."""
    import torch

    from .. import _validate

    if kind not in TASK_KINDS:
        raise CircuitCheckError(f"unknown head score {kind!r}{did_you_mean(kind, TASK_KINDS)}; "
                                f"on a task's prompts use one of {list(TASK_KINDS)}")
    confidence = _validate.open_unit(confidence, "confidence")
    enc = task.encode(model)
    tokens, lengths = _prompt_set(task, enc, prompts)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.full((tokens.shape[0], L, H), float("nan"))

    def take(layer: int, pattern: torch.Tensor, v: Any, rws: torch.Tensor) -> None:
        toks = tokens[rws, :pattern.shape[-1]].to(pattern.device)
        keys, queries = key_mask(kind, toks, lengths[rws].to(pattern.device))
        mass = (pattern * keys[:, None].float()).sum(-1)  # [b, H, Q]
        count = queries.sum(-1)  # [b]
        score = (mass * queries[:, None].float()).sum(-1) / count.clamp_min(1)[:, None]
        score[count == 0] = float("nan")
        out[rws, layer] = score.cpu()

    run_patterns(model, tokens, lengths, take, batch_size=batch_size)
    per = out.numpy().astype(float)
    per = per[np.isfinite(per).all((1, 2))]
    if per.shape[0] == 0:
        raise TaskError(f"no prompt of the task has a query a {kind} head could attend from "
                        "(e.g. no repeated token)")
    mean, lo, hi = boot_heads(per, confidence, seed)
    lo, hi = widen_unit(mean, lo, hi, per.shape[0], confidence, rate=False)  # attention lies in [0, 1]
    return HeadScores(kind, mean, lo, hi, per, confidence)


def key_mask(kind: str, toks: "torch.Tensor", lengths: "torch.Tensor"
             ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """keys [b, Q, K] (which keys count for each query) and queries [b, Q] (which count)."""
    import torch

    b, P = toks.shape
    i = torch.arange(P, device=toks.device)
    real = i[None] < lengths[:, None]  # [b, P]
    before = i[None, :] < i[:, None]   # key j < query q
    if kind == "bos":
        keys = (i[None, None, :] == 0).expand(b, P, P)
        queries = real & (i[None] >= 1)
    elif kind == "self":
        keys = (i[:, None] == i[None, :])[None].expand(b, P, P)
        queries = real & (i[None] >= 1)
    elif kind == "previous_token":
        keys = (i[None, :] == i[:, None] - 1)[None].expand(b, P, P)
        queries = real & (i[None] >= 2)
    else:
        if kind == "duplicate_token":
            keys = (toks[:, :, None] == toks[:, None, :]) & before[None]
        else:  # induction: key j follows an earlier occurrence (j - 1) of the query's token
            prev = torch.cat([torch.full_like(toks[:, :1], -1), toks[:, :-1]], 1)  # tok[j-1]
            keys = (toks[:, :, None] == prev[:, None, :]) & before[None] & (i[None, None] >= 1)
        keys = keys & real[:, None, :]
        queries = real & keys.any(-1)
    return keys, queries


__all__ = ["PositionAttention", "TASK_KINDS", "key_mask", "position_attention",
           "run_patterns", "task_head_scores"]
