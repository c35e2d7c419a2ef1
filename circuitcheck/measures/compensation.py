"""Backup heads and compensation (Wang et al. 2022, backup name movers): the per-head direct
logit attribution (DLA) after ablating some heads at some positions, against the clean DLA.

Ablating the heads ``ablate`` at positions ``at`` (``end`` by default; ``"all"``: everywhere)
changes the logit difference from ``clean`` to ``actual``. If nothing downstream reacted, it
would fall by the direct effect the ablated heads lose, ``lost`` = Σ_ablated (DLA_clean -
DLA_ablated) (for zero ablation at ``end``, their clean DLA): the *naive prediction* is
``clean - lost``. Heads that raise their own DLA under the ablation (``change`` =
DLA_ablated - DLA_clean > 0) compensate; the real logit difference is above the naive
prediction by the change summed over every other component.

:func:`ablated_dla` returns all of it (:class:`Compensation`); :func:`compensation` is the
claim's measurement: Σ_heads change as a share of ``lost`` (``relative=True``) or in logits.

The final norm divides every write by the run's own scale, and an ablation changes that scale:
with the ablated run's scale (``scale="ablated"``) every head's DLA moves, upstream heads'
included, though their outputs did not change, and the components add up to ``actual``. The
default ``scale="clean"`` keeps the clean run's scale, so only heads whose *writes* changed
(those downstream of the ablation) show a change; the norm's share is then
``actual - naive - Σ change of the other heads - change of the other components``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..circuit import Head, format_head
from ..errors import CircuitCheckError
from ..stats import bootstrap_ci
from ._heads_common import boot_heads
from ._measurement import Measurement
from ._patching_base import _head_mask, _heads, _seed
from ._result import ResultProtocol, head_table, jsonable
from .dla import DirectLogitAttribution, attribute, dla_hook_names


@dataclass(frozen=True, eq=False)
class Compensation(ResultProtocol):
    """DLA with ``ablated`` heads ablated at ``at`` against the clean DLA.

    ``values[layer, head]``: the mean change DLA_ablated - DLA_clean (bootstrap interval over
    prompts); ``clean``/``after``: both :class:`DirectLogitAttribution`; per prompt
    ``clean_ld``, ``actual`` (the real post-ablation logit difference), ``lost`` and
    ``naive`` = ``clean_ld - lost``.
    """

    ablated: tuple[Head, ...]
    at: tuple[str, ...]
    ablation: str
    values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    clean: DirectLogitAttribution = field(repr=False)
    after: DirectLogitAttribution = field(repr=False)
    confidence: float = 0.95
    scale: str = "clean"

    @property
    def change(self) -> np.ndarray:
        """[L, H, N] per-prompt change of each head's DLA."""
        return self.after.per_prompt - self.clean.per_prompt

    @property
    def clean_ld(self) -> np.ndarray:
        return self.clean.logit_diff

    @property
    def actual(self) -> np.ndarray:
        return self.after.logit_diff

    @property
    def lost(self) -> np.ndarray:
        return -sum(self.change[l, h] for l, h in self.ablated)

    @property
    def naive(self) -> np.ndarray:
        return self.clean_ld - self.lost

    def of(self, heads: Any) -> np.ndarray:
        """Per prompt, the summed DLA change of ``heads``."""
        return sum((self.change[l, h] for l, h in heads), np.zeros(len(self.clean_ld)))

    def table(self):
        return head_table(self.values, self.ci_low, self.ci_high, name="dla_change",
                          clean=self.clean.heads, ablated=self.after.heads)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"ablated": [format_head(h) for h in self.ablated], "at": list(self.at),
                         "ablation": self.ablation, "values": self.values,
                         "ci_low": self.ci_low, "ci_high": self.ci_high,
                         "clean_logit_diff": float(self.clean_ld.mean()),
                         "naive_prediction": float(self.naive.mean()),
                         "actual_logit_diff": float(self.actual.mean()),
                         "lost_direct_effect": float(self.lost.mean())})

    def summary(self) -> str:
        L, H = self.values.shape
        others = [(float(self.values[l, h]), (l, h)) for l in range(L) for h in range(H)
                  if (l, h) not in self.ablated]
        best = sorted(others, reverse=True)[:3]
        return (f"ablating {', '.join(format_head(h) for h in self.ablated)} at "
                f"{'/'.join(self.at)} ({self.ablation}): logit diff {self.clean_ld.mean():.2f} -> "
                f"{self.actual.mean():.2f} (naive prediction {self.naive.mean():.2f}); largest "
                "compensation " + ", ".join(f"{format_head(hd)} {v:+.2f}" for v, hd in best))


def _variants(model: Any, task: Any, heads: list[Head], at: tuple[str, ...]) -> Any:
    import torch

    from ..interventions.ablation import Variants

    mask = _head_mask(model, heads)[None]  # [1, L, H]
    if at == ("all",):
        return Variants(mask, invert=torch.tensor([True]))
    for p in at:
        task.check_position(p)
    sel_at = mask[..., None].expand(-1, -1, -1, len(at)).clone()
    return Variants(torch.zeros_like(mask), sel_at, at, torch.tensor([True]))


def ablated_dla(model: Any, task: Any, ablate: Any, *, at: Any = "end",
                ablation: str = "zero", reference: str | None = None, scale: str = "clean",
                confidence: float = 0.95, seed: int | None = None,
                batch_size: int | None = None) -> Compensation:
    """Per-head DLA with ``ablate`` ablated at ``at`` against the clean DLA (module docstring)."""
    import torch

    from .. import _validate
    from ..interventions.ablation import Ablation, _ablation_hooks, ablation_values

    confidence = _validate.open_unit(confidence, "confidence")
    heads = _heads(model, ablate, "ablate")
    at = (at,) if isinstance(at, str) else tuple(at)
    if not at:
        raise CircuitCheckError("at= names no position; give 'end', a task position or 'all'")
    if scale not in ("clean", "ablated"):
        raise CircuitCheckError(f"scale must be 'clean' or 'ablated', got {scale!r}")
    enc = task.encode(model)
    if enc.wrong is None:
        raise CircuitCheckError("compensation is measured on the logit difference; give the "
                                "task `wrong_answers=[...]`")
    kind = Ablation.parse(ablation)
    values = ablation_values(model, enc, kind, reference)
    variants = _variants(model, task, heads, at)
    pos_table = None if variants.sel_at is None else torch.stack(
        [enc.positions[p] for p in variants.pos_names], dim=1)
    clean, clean_scale = _dla_run(model, enc, None, batch_size)
    after, after_scale = _dla_run(model, enc, lambda rows, P: _ablation_hooks(
        model, variants, values, torch.zeros_like(rows), rows, P, pos_table, variants.invert,
        model.cfg.device), batch_size)
    if scale == "clean":  # the same writes, divided by the clean run's norm scale instead
        ratio = after_scale / clean_scale
        after = DirectLogitAttribution((after.per_prompt * ratio).mean(-1),
                                       after.per_prompt * ratio, after.components,
                                       after.logit_diff, after.total)
    change = after.per_prompt - clean.per_prompt  # [L, H, N]
    mean, lo, hi = boot_heads(np.moveaxis(change, -1, 0), confidence, _seed(seed))
    return Compensation(tuple(heads), at, values.describe(), mean, lo, hi, clean, after,
                        confidence, scale)


def _dla_run(model: Any, enc: Any, hooks_for: Any, batch_size: int | None
             ) -> tuple[DirectLogitAttribution, np.ndarray]:
    """DLA of one run (with ``hooks_for(rows, P)`` interventions, or none) and its final-norm
    scale at the end of each prompt ([N])."""
    import torch

    from ..interventions._batching import rows_per_batch

    names = dla_hook_names(model)
    N, P_all = enc.tokens.shape
    store: dict[str, torch.Tensor] = {}
    ld = np.empty(N)
    device = model.cfg.device
    bs = batch_size or rows_per_batch(model, P_all)
    with torch.inference_mode():
        for s in range(0, N, bs):
            rows = torch.arange(s, min(s + bs, N))
            P = int(enc.lengths[rows].max())
            hooks = [] if hooks_for is None else hooks_for(rows, P)

            def saver(name: str, rows: torch.Tensor = rows, P: int = P) -> Any:
                def save(x: torch.Tensor, hook: Any) -> None:  # hook.name may be an alias
                    if name not in store:
                        store[name] = x.new_zeros((N, P_all) + x.shape[2:])
                    store[name][rows.to(x.device), :P] = x.detach()
                return save

            logits = model.run_with_hooks(enc.tokens[rows, :P].to(device),
                                          fwd_hooks=hooks + [(n, saver(n)) for n in names])
            last = logits[torch.arange(len(rows)), (enc.lengths[rows] - 1).to(device)].double()
            a, w = enc.answers[rows].to(device), enc.wrong[rows].to(device)
            b = torch.arange(len(rows), device=device)
            ld[rows.numpy()] = (last[b, a] - last[b, w]).cpu().numpy()
    sc = store["ln_final.hook_scale"]
    end = (enc.lengths - 1).to(sc.device)
    scale = sc[torch.arange(N, device=sc.device), end].reshape(N).double().cpu().numpy()
    return attribute(model, enc, store, ld), scale


def compensation(model: Any, task: Any, heads: Any, *, ablate: Any, at: Any = "end",
                 ablation: str = "zero", reference: str | None = None, scale: str = "clean",
                 relative: bool = True,
                 confidence: float = 0.95, seed: int | None = None,
                 batch_size: int | None = None) -> Measurement:
    """How much ``heads`` raise their direct effect when ``ablate`` is ablated at ``at``:
    mean Σ_heads (DLA_ablated - DLA_clean), divided by the mean direct effect the ablated heads
    lose (``relative``, a share: 1 = they make up all of it) or in logits."""
    from .. import _validate

    seed = _seed(seed)
    _validate.flag(relative, "relative")
    comp = ablated_dla(model, task, ablate, at=at, ablation=ablation, reference=reference,
                       scale=scale, confidence=confidence, seed=seed, batch_size=batch_size)
    mine = _heads(model, heads)
    overlap = set(mine) & set(comp.ablated)
    if overlap:
        raise CircuitCheckError(f"heads {sorted(format_head(h) for h in overlap)} are both "
                                "ablated and claimed to compensate")
    numer, lost = comp.of(mine), comp.lost
    n = len(numer)
    problem = None
    if relative:
        lo_l, hi_l = bootstrap_ci(lambda i: lost[i].mean(1), n, confidence=confidence, seed=seed)
        if lo_l <= 0:
            problem = (f"the ablated heads lose no clear direct effect (mean {lost.mean():.3g}, "
                       f"CI [{lo_l:.3g}, {hi_l:.3g}]), so there is nothing to compensate as a "
                       "share; use relative=False (logits)")
        scale = float(lost.mean())
        ci = bootstrap_ci(lambda i: numer[i].mean(1) / lost[i].mean(1), n,
                          confidence=confidence, seed=seed)
    else:
        scale = 1.0
        ci = bootstrap_ci(lambda i: numer[i].mean(1), n, confidence=confidence, seed=seed)
    value = float("nan") if problem else float(numer.mean()) / scale
    label = ", ".join(format_head(h) for h in comp.ablated)
    details = {
        "heads": [list(h) for h in mine],
        "heatmaps": {"DLA change under ablation": {
            "data": comp.values.tolist(),
            "label": f"DLA with {label} ablated at {'/'.join(comp.at)} minus clean DLA (logits)",
            "outline": [list(h) for h in mine]}},
        "bars": {"logit difference": {
            "labels": ["clean", "naive: clean - lost direct effect", "after ablation (real)"],
            "values": [float(comp.clean_ld.mean()), float(comp.naive.mean()),
                       float(comp.actual.mean())]}}}
    return Measurement(
        kind="compensation", value=value, ci=ci, per_prompt=numer / scale,
        metric="share of the lost direct effect" if relative else "logits",
        metric_description=(f"Σ DLA change of {', '.join(format_head(h) for h in mine)} with "
                            f"{label} {comp.ablation} at {'/'.join(comp.at)}"
                            + (" / their lost direct effect" if relative else "")),
        ablation=comp.ablation, baselines={"clean": float(comp.clean_ld.mean()),
                                           "naive": float(comp.naive.mean()),
                                           "ablated": float(comp.actual.mean()),
                                           "lost": float(lost.mean())},
        confidence=confidence, seed=seed, model=getattr(model, "cc_name", ""), task=task.name,
        problem=problem, details=details)


__all__ = ["Compensation", "ablated_dla", "compensation"]
