"""What the patching measurements share: the ``PatchGrid`` result, the clean/corrupted set-up,
head masks, named-position indices, and the ratio-with-bootstrap of the claim measurements.

Conventions (clean = the task's prompts, corrupted = their counterfactual pairs, F = the
mean metric over prompts, default the logit difference at each prompt's last token):

- **denoising** patches clean activations into the corrupted run; a cell holds
  (F(patched) - F(corrupted)) / (F(clean) - F(corrupted)): 1 = the patch restores the clean
  behaviour, 0 = no effect (the TransformerLens convention).
- **noising** patches corrupted activations into the clean run; a cell holds
  (F(patched) - F(clean)) / (F(clean) - F(corrupted)): -1 = the patch destroys the clean
  behaviour as much as the whole corruption does, 0 = no effect. Path patching is noising.

A cell over positions that not every prompt has (``per_position=True`` with ragged prompts)
is averaged over the prompts that have it, clean and corrupted baselines included.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..circuit import Head, parse_head
from ..errors import CircuitCheckError, CircuitError
from ..interventions import Readout
from ..interventions.patching import HEAD_COMPONENTS, check_paired, n_units
from ..stats import bootstrap_ci
from ..tasks import EncodedTask, Task
from ._measurement import Measurement
from ._result import ResultProtocol, nan_like
from .metrics import Metric, get_metric

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True, eq=False)
class PatchGrid(ResultProtocol):
    """A labelled array of normalised patching effects.

    ``values`` has axes ``dims`` (e.g. ``("layer", "head")`` or ``("layer", "pos", "head")``),
    labelled by ``coords[dim]``. ``per_prompt`` holds the raw metric of each patched run
    (``dims + ("prompt",)``; NaN where a prompt has no such position), ``clean`` and
    ``corrupted`` the unpatched runs' metric per prompt. ``method`` is ``exact``,
    ``attribution`` (a first-order estimate), ``screened`` (attribution, then exact where the
    screen cannot rule a cell out) or ``path``. ``exact`` (same shape as ``values``) says which
    cells were patched exactly (on every prompt); a screened grid keeps the screen's estimate in
    the others (its ``per_prompt``: exact on the prompts a cell was patched on, the attribution
    on the rest; ``screen["prompts_patched"]`` counts them), and a grid computed for a subset
    (``heads=``, ``layers=``) holds NaN outside it. ``problem`` is set (and ``values`` NaN)
    when the model does not tell clean from corrupted, so there is nothing to normalise by.
    """

    values: np.ndarray
    dims: tuple[str, ...]
    coords: dict[str, tuple[Any, ...]]
    metric: str
    normalization: str
    component: str
    direction: str
    method: str = "exact"
    per_prompt: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    clean: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    corrupted: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    problem: str | None = None
    exact: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    screen: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.exact is None:
            object.__setattr__(self, "exact", np.full(self.values.shape,
                                                      self.method in ("exact", "path")))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def ci_low(self) -> np.ndarray:
        """NaN: a patching grid has no interval per cell."""
        return nan_like(self.values)

    ci_high = ci_low

    @property
    def raw(self) -> np.ndarray:
        """The un-normalised grid: the patched runs' mean metric per cell (e.g. the answer's
        raw logit with ``metric="logit"``, as the induction notebook plots it); NaN where the
        cell was not patched exactly (a screened or subset grid) or has no prompts."""
        if self.per_prompt is None:
            return nan_like(self.values)
        import warnings

        with warnings.catch_warnings():  # a cell with no prompts is NaN, said above
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(self.per_prompt, axis=-1)
        return np.where(self.exact, mean, np.nan)

    def table(self):
        """One row per cell: its coordinates and value."""
        import pandas as pd

        idx = np.indices(self.values.shape).reshape(self.values.ndim, -1)
        data = {d: [self.coords[d][i] if d in self.coords else i for i in idx[k]]
                for k, d in enumerate(self.dims)}
        data["value"] = self.values.ravel()
        return pd.DataFrame(data)

    def summary(self) -> str:
        best = ", ".join(f"{k} {v:+.2f}" for k, v in self.top(3))
        extra = ""
        if self.method == "screened":
            extra = f" ({int(self.exact.sum())} of {self.exact.size} cells exact)"
        return (f"{self.method} {self.direction} patching of {self.component} over "
                f"{' x '.join(self.dims)} {self.shape}{extra}: {self.normalization}; "
                f"largest {best}")

    def __getitem__(self, key: Any) -> Any:
        """``grid["9.9"]`` / ``grid[9, 9]`` for a (layer, head) grid; else numpy indexing."""
        if self.dims == ("layer", "head") and (isinstance(key, str) or (
                isinstance(key, tuple) and len(key) == 2)):
            layer, head = parse_head(key)
            return float(self.values[layer, head])
        return self.values[key]

    def top(self, k: int = 5, *, by_abs: bool = True) -> list[tuple[tuple[Any, ...], float]]:
        """The k largest cells (by absolute value by default) as (labels, value)."""
        flat = np.nan_to_num(np.abs(self.values) if by_abs else self.values, nan=-np.inf)
        order = np.argsort(-flat, axis=None, kind="stable")[:k]
        out = []
        for i in order:
            idx = np.unravel_index(i, self.values.shape)
            labels = tuple(self.coords[d][j] for d, j in zip(self.dims, idx))
            out.append((labels, float(self.values[idx])))
        return out

    def heatmap(self, outline: Iterable[Any] = ()) -> dict[str, Any]:
        """A report heatmap (``{"data", "label", "outline"}``) of a 2-D grid."""
        if self.values.ndim != 2:
            raise CircuitCheckError(f"a heatmap needs a 2-D grid; this one has dims {self.dims}")
        data = [[None if not np.isfinite(v) else float(v) for v in row] for row in self.values]
        label = (f"{self.method} {self.direction} patching of {self.component}: "
                 f"{self.normalization}")
        return {"data": data, "label": label,
                "outline": [list(parse_head(h)) for h in outline]}

    def to_dict(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "coords": {k: list(v) for k, v in self.coords.items()},
                "values": [None if not np.isfinite(v) else float(v)
                           for v in self.values.ravel()],
                "shape": list(self.shape), "metric": self.metric,
                "normalization": self.normalization, "component": self.component,
                "direction": self.direction, "method": self.method, "problem": self.problem,
                "exact": [bool(x) for x in np.asarray(self.exact).ravel()],
                "screen": self.screen}


def _normalization(direction: str) -> str:
    if direction == "denoise":
        return "(patched - corrupted) / (clean - corrupted)"
    return "(patched - clean) / (clean - corrupted)"


@dataclass(frozen=True, eq=False)
class _Setup:
    model: Any
    task: Task
    enc: EncodedTask
    metric: Metric


def _setup(model: Any, task: Task, metric: "str | Metric", *, paired: bool = True,
           what: str = "activation patching") -> _Setup:
    if not isinstance(task, Task):
        raise CircuitCheckError(f"task must be a cc.Task, got {type(task).__name__}")
    enc = task.encode(model)
    if paired:
        check_paired(enc, what)
    m = get_metric(metric, has_wrong=enc.wrong is not None, has_sets=enc.good is not None)
    return _Setup(model, task, enc, m)


def _heads(model: Any, heads: Any, what: str = "heads") -> list[Head]:
    """Parse and range-check a head or a list of heads."""
    if isinstance(heads, str) or (isinstance(heads, tuple) and len(heads) == 2
                                  and all(isinstance(x, int) for x in heads)):
        heads = [heads]
    out = [parse_head(h) for h in heads]
    if not out:
        raise CircuitError(f"name at least one head in {what}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for layer, h in out:
        if not (0 <= layer < L and 0 <= h < H):
            raise CircuitError(
                f"head {layer}.{h} in {what} is out of range: the model has {L} layers "
                f"(0..{L - 1}) and {H} heads per layer (0..{H - 1})")
    return list(dict.fromkeys(out))


def _head_mask(model: Any, heads: Sequence[Head]) -> "torch.Tensor":
    import torch

    m = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    for layer, h in heads:
        m[layer, h] = True
    return m


def _position_index(s: _Setup, positions: Sequence[str]) -> "torch.Tensor":
    """[N, K] token index of each named position per prompt."""
    import torch

    for p in positions:
        s.task.check_position(p)
    return torch.stack([s.enc.positions[p] for p in positions], dim=1)


def _layout(model: Any, s: _Setup, component: str, per_position: bool,
            positions: Sequence[str] | None
            ) -> tuple["torch.Tensor | None", tuple[int, ...], tuple[str, ...],
                       dict[str, tuple[Any, ...]]]:
    """[N, K] position of each grid position per prompt (None: all positions at once), and the
    grid's shape, dims and coords."""
    import torch

    enc = s.enc
    L, N, P = model.cfg.n_layers, enc.n, enc.tokens.shape[1]
    is_head = component in HEAD_COMPONENTS
    U = n_units(model, component) if is_head else 1
    if positions is not None:
        pos_of = _position_index(s, positions)  # [N, K]
        pos_labels: tuple[Any, ...] = tuple(positions)
    elif per_position:
        pos_of = torch.arange(P).expand(N, P)
        pos_labels = tuple(range(P))
    else:
        pos_of, pos_labels = None, ()
    K = 1 if pos_of is None else pos_of.shape[1]
    shape = (L,) + ((K,) if pos_of is not None else ()) + ((U,) if is_head else ())
    dims = ("layer",) + (("pos",) if pos_of is not None else ()) + (
        ("kv_head" if U != model.cfg.n_heads else "head",) if is_head else ())
    coords: dict[str, tuple[Any, ...]] = {"layer": tuple(range(L))}
    if pos_of is not None:
        coords["pos"] = pos_labels
    if is_head:
        coords[dims[-1]] = tuple(range(U))
    return pos_of, shape, dims, coords


def _ratio_cells(patched: np.ndarray, s_clean: np.ndarray, s_corr: np.ndarray,
                 direction: str) -> tuple[np.ndarray, str | None]:
    """Normalise per-prompt patched metrics ([..., N], NaN where absent) cell by cell."""
    valid = np.isfinite(patched)
    count = valid.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(valid, patched, 0).sum(-1) / count
        clean = (valid * s_clean).sum(-1) / count
        corr = (valid * s_corr).sum(-1) / count
        base = corr if direction == "denoise" else clean
        den = clean - corr
        gap = abs(float(s_clean.mean() - s_corr.mean()))
        scale = max(abs(float(s_clean.mean())), abs(float(s_corr.mean())), 1e-12)
        problem = None
        if gap <= 1e-6 * scale:
            problem = ("the model's metric is the same on clean and corrupted prompts "
                       f"({s_clean.mean():.4g} vs {s_corr.mean():.4g}), so there is nothing for "
                       "a patch to restore; check the task's corrupted prompts and answers")
            return np.full(mean_p.shape, np.nan), problem
        return (mean_p - base) / den, problem


def _grid(values_pp: np.ndarray, dims: tuple[str, ...], coords: dict[str, tuple[Any, ...]],
          s: _Setup, clean: Readout, corr: Readout, component: str, direction: str,
          method: str = "exact", exact: np.ndarray | None = None) -> PatchGrid:
    c, k = s.metric(clean), s.metric(corr)
    values, problem = _ratio_cells(values_pp, c, k, direction)
    return PatchGrid(values, dims, coords, s.metric.name, _normalization(direction), component,
                     direction, method, values_pp, c, k, problem, exact)


def _ratio_measurement(kind: str, numer: np.ndarray, base: np.ndarray, full: np.ndarray,
                       metric: Metric, *, seed: int, confidence: float, model: Any,
                       task: Task, what: str, baselines: dict[str, float],
                       details: dict[str, Any]) -> Measurement:
    """(mean(numer) - mean(base)) / (mean(full) - mean(base)), paired bootstrap over prompts."""
    n = len(full)
    b = float(base.mean())
    den = float(full.mean()) - b
    den_lo, den_hi = bootstrap_ci(lambda i: full[i].mean(1) - base[i].mean(1), n,
                                  confidence=confidence, seed=seed)
    problem = None
    if not den or den_lo <= 0 <= den_hi:
        problem = (f"the model does not separate the prompts: its {metric.name} is "
                   f"{full.mean():.3g} against {b:.3g} for {what} (difference CI "
                   f"[{den_lo:.3g}, {den_hi:.3g}] includes 0), so a ratio to it would divide by "
                   "noise; check the task, answers and model")
    ci = bootstrap_ci(lambda i: (numer[i].mean(1) - base[i].mean(1))
                      / (full[i].mean(1) - base[i].mean(1)), n, confidence=confidence, seed=seed)
    value = float("nan") if problem else (float(numer.mean()) - b) / den
    per_prompt = (numer - b) / den if den else np.full(n, np.nan)
    return Measurement(kind=kind, value=value, ci=ci, per_prompt=per_prompt, metric=metric.name,
                       metric_description=metric.describe, baselines=baselines,
                       confidence=confidence, seed=seed, model=getattr(model, "cc_name", ""),
                       task=task.name, problem=problem, details=details)


def _seed(seed: int | None) -> int:
    from .. import _settings

    return _settings.seed() if seed is None else int(seed)


def _cells(model: Any, shape: tuple[int, ...], dims: tuple[str, ...], heads: Any = None,
           layers: Any = None) -> np.ndarray | None:
    """The grid cells a ``heads=`` / ``layers=`` subset asks for (None: every cell).

    ``heads`` names (layer, head) units: query heads, or key/value heads on a grid whose last
    dim is ``kv_head`` (k, v on grouped-query models); every position of each."""
    if heads is None and layers is None:
        return None
    L = model.cfg.n_layers
    keep = np.ones(shape, dtype=bool)
    if layers is not None:
        ls = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
        for layer in ls:
            if not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < L:
                raise CircuitError(f"layer {layer!r} in layers= is out of range: the model has "
                                   f"{L} layers (0..{L - 1})")
        lm = np.zeros(L, dtype=bool)
        lm[[int(x) for x in ls]] = True
        keep &= lm.reshape((L,) + (1,) * (len(shape) - 1))
    if heads is not None:
        if dims[-1] not in ("head", "kv_head"):
            raise CircuitError(f"heads= selects heads, but this grid has dims {dims}; use "
                               "layers=")
        if isinstance(heads, str) or (isinstance(heads, tuple) and len(heads) == 2
                                      and all(isinstance(x, int) for x in heads)):
            heads = [heads]
        U = shape[-1]
        hm = np.zeros((L, U), dtype=bool)
        for h in heads:
            layer, u = parse_head(h)
            if not (0 <= layer < L and 0 <= u < U):
                what = "key/value heads" if dims[-1] == "kv_head" else "heads"
                raise CircuitError(f"head {layer}.{u} in heads= is out of range: the model has "
                                   f"{L} layers and {U} {what} per layer for this component")
            hm[layer, u] = True
        keep &= hm.reshape((L,) + (1,) * (len(shape) - 2) + (U,))
    if not keep.any():
        raise CircuitError("heads= / layers= select no cell of the grid")
    return keep
