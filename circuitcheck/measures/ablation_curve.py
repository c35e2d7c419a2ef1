"""Seed 004's experiment grid: ablate the top-k heads by a score vs k random heads, for several
k, across lags of repeated random sequences, in one batched sweep per (mode, lag).

For each lag (the repeat distance: ``[BOS] r1..r_lag r1..r_j`` -> ``r_(j+1)``) the task is
``tasks.induction(model, n, seq_len=lag, seed)``; for each k in ``ks`` (0 = no ablation) the
top-k heads of the ranking (induction score by default) have their attention scores ablated
together, and so do the first k heads of each of ``n_permutations`` random permutations of
the same pool. The read-out is the copying loss, -log p(answer) in nats, as in the notebook.

``layers`` restricts the pool to ``"all"`` layers, the ``"lower"`` half (layers
``0 .. L//2 - 1``, nearest the embeddings) or the ``"upper"`` half (``L//2 .. L - 1``). The
names say which layers, by index: the notebook's README calls these "top" and "bottom" the
other way round from its code.

Modes are those of ``interventions.attention``: ``zero`` (the head attends nowhere) and
``mean`` (each query row's scores replaced by their mean: uniform attention over the visible
keys - the notebook's mean mode).
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..circuit import Head, format_head
from ..errors import CircuitCheckError
from ..executors import get_executor, load_spec
from ..interventions.attention import check_mode, run_attention_ablation
from ..stats import bootstrap_ci
from ._distributed import attention_grid
from ._result import ResultProtocol, jsonable

LAYER_SETS = ("all", "lower", "upper")


@dataclass(frozen=True, eq=False)
class AblationCurve(ResultProtocol):
    """Copying-loss increases over the grid.

    ``ranked`` is the ranking within the layer pool, best first. ``chosen[(mode, lag)]`` is [len(ks), N] per-prompt increases for the top-k heads and
    ``random[(mode, lag)]`` [len(ks), n_permutations, N] for the random sets; ``loss_clean[lag]``
    is the clean loss per prompt; ``permutations[p][:k]`` is random set p at k.
    """

    ks: tuple[int, ...]
    lags: tuple[int, ...]
    modes: tuple[str, ...]
    layers: str
    ranked: tuple[Head, ...]
    chosen: dict[tuple[str, int], np.ndarray] = field(repr=False)
    random: dict[tuple[str, int], np.ndarray] = field(repr=False)
    loss_clean: dict[int, np.ndarray] = field(repr=False)
    permutations: tuple[tuple[Head, ...], ...] = field(repr=False, default=())
    score_source: str = "induction"
    seed: int = 0
    confidence: float = 0.95

    def _at(self, k: int, lag: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
        if k not in self.ks or lag not in self.lags or mode not in self.modes:
            raise CircuitCheckError(f"no cell k={k}, lag={lag}, mode={mode!r} in this curve "
                                    f"(ks {list(self.ks)}, lags {list(self.lags)}, modes "
                                    f"{list(self.modes)})")
        i = self.ks.index(k)
        return self.chosen[(mode, lag)][i], self.random[(mode, lag)][i]

    def excess(self, k: int, lag: int, mode: str | None = None) -> np.ndarray:
        """Per prompt: the top-k heads' loss increase minus the random sets' mean increase."""
        chosen, rand = self._at(k, lag, mode or self.modes[0])
        return chosen - rand.mean(0)

    def excess_ci(self, k: int, lag: int, mode: str | None = None) -> tuple[float, float]:
        """Bootstrap interval over prompts of the mean ``excess`` (random sets held fixed)."""
        e = self.excess(k, lag, mode)
        return bootstrap_ci(lambda i: e[i].mean(1), len(e), confidence=self.confidence,
                            seed=self.seed)

    @property
    def value(self) -> float:
        """The smallest mean excess over lags at the largest k of the first mode."""
        return min(float(self.excess(self.ks[-1], lag).mean()) for lag in self.lags)

    @property
    def ci_low(self) -> float:
        """NaN: the curve has one interval per cell (``table()``, ``excess_ci``)."""
        return float("nan")

    ci_high = ci_low

    def table(self):
        """One row per (mode, lag, k, heads): mean loss increase, its interval and n."""
        import pandas as pd

        rows = []
        for mode in self.modes:
            for lag in self.lags:
                for i, k in enumerate(self.ks):
                    chosen, rand = self.chosen[(mode, lag)][i], self.random[(mode, lag)][i]
                    for what, per in (("top by score", chosen), ("random", rand.mean(0))):
                        lo, hi = bootstrap_ci(lambda j, p=per: p[j].mean(1), len(per),
                                              confidence=self.confidence, seed=self.seed)
                        rows.append({"mode": mode, "lag": lag, "k": k, "heads": what,
                                     "loss_increase": float(per.mean()), "ci_low": lo,
                                     "ci_high": hi, "n": len(per)})
        return pd.DataFrame(rows)

    def lines(self, mode: str | None = None) -> dict[str, Any]:
        """The report's line chart: loss increase against k, top vs random, per lag."""
        mode = mode or self.modes[0]
        t = self.table()
        t = t[t["mode"] == mode]
        series = {}
        for lag in self.lags:
            for what in ("top by score", "random"):
                s = t[(t["lag"] == lag) & (t["heads"] == what)]
                series[f"lag {lag}, {what}"] = {"y": s["loss_increase"].tolist(),
                                                "lo": s["ci_low"].tolist(),
                                                "hi": s["ci_high"].tolist(),
                                                "dashed": what == "random"}
        return {"x": list(self.ks), "series": series, "xlabel": "k (heads ablated)",
                "ylabel": "copying-loss increase (nats)"}

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"ks": list(self.ks), "lags": list(self.lags), "modes": list(self.modes),
                         "layers": self.layers, "score_source": self.score_source,
                         "ranked": [format_head(h) for h in self.ranked[:max(self.ks)]],
                         "table": self.table().to_dict(orient="records")})

    def summary(self) -> str:
        k = self.ks[-1]
        parts = [f"lag {lag}: {self.excess(k, lag).mean():+.3f}" for lag in self.lags]
        return (f"ablation curve ({self.modes[0]}, {self.layers} layers): top-{k} vs {k} random "
                f"heads, excess loss " + ", ".join(parts) + " nats")


def read_scores_csv(path: str | Path, n_layers: int, n_heads: int) -> np.ndarray:
    """Head scores from a CSV with columns ``layer``, ``head`` and a score column (``score``,
    or the one other column), one row per head; every head must be there."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise CircuitCheckError(f"cannot read the scores CSV {path}: {exc}") from None
    cols = list(rows[0]) if rows else []
    other = [c for c in cols if c not in ("layer", "head")]
    col = "score" if "score" in cols else (other[0] if len(other) == 1 else None)
    if not rows or "layer" not in cols or "head" not in cols or col is None:
        raise CircuitCheckError(f"{path}: a scores CSV needs a header 'layer,head,score' and one "
                                f"row per head; found columns {cols}")
    out = np.full((n_layers, n_heads), np.nan)
    for i, r in enumerate(rows, start=2):
        try:
            layer, head, score = int(r["layer"]), int(r["head"]), float(r[col])
        except (TypeError, ValueError):
            raise CircuitCheckError(f"{path}, line {i}: cannot read layer/head/{col} from "
                                    f"{dict(r)}") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise CircuitCheckError(f"{path}, line {i}: head {layer}.{head} is out of range for a "
                                    f"{n_layers}-layer, {n_heads}-head model; is this the "
                                    "scores file of another model?")
        out[layer, head] = score
    missing = [f"{l}.{h}" for l, h in zip(*np.nonzero(np.isnan(out)))]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8
                                          else "")
        raise CircuitCheckError(f"{path}: the scores CSV has no score for {len(missing)} of "
                                f"{n_layers * n_heads} heads ({shown}); give every head a row "
                                "(layer,head,score) or pass scores as an array")
    return out


def _ranking(model: Any, scores: Any, heads: Any, n: int, seed: int) -> tuple[list[Head], str]:
    """The heads best first, and where the order came from."""
    from ._patching_base import _heads

    L, H = model.cfg.n_layers, model.cfg.n_heads
    if heads is not None:
        return _heads(model, heads), "given heads"
    if scores is None or isinstance(scores, str) and scores in ("induction",):
        from .head_scores import head_scores

        grid = head_scores(model, "induction", n=n, seed=seed).scores
        source = "induction score"
    elif isinstance(scores, (str, Path)):
        grid, source = read_scores_csv(scores, L, H), f"scores from {scores}"
    else:
        grid = np.asarray(getattr(scores, "scores", scores), dtype=float)
        source = "given scores"
        if grid.shape != (L, H):
            raise CircuitCheckError(f"scores must be [{L}, {H}] (layers x heads), got "
                                    f"{list(grid.shape)}")
    order = np.argsort(-grid, axis=None, kind="stable")
    return [(int(i // H), int(i % H)) for i in order], source


def ablation_curve(model: Any, *, ks: Sequence[int] = (0, 1, 2, 5, 10),
                   lags: Sequence[int] = (5, 10, 20), n: int = 24, n_permutations: int = 5,
                   modes: Sequence[str] = ("zero",), layers: str = "all", scores: Any = None,
                   heads: Any = None, seed: int = 0, confidence: float = 0.95,
                   batch_size: int | None = None, executor: Any = None) -> AblationCurve:
    """Seed 004's grid (see the module docstring): the copying-loss increase from ablating the
    top-k heads' attention against k random heads, for each k, lag and mode.

    ``scores``: ``None`` or ``"induction"`` (``cc.head_scores(model, "induction")``), a path to
    a scores CSV (``layer,head,score``), or a ``[n_layers, n_heads]`` array; ``heads`` instead
    gives the ranking outright. The random sets are the first k of each random permutation of
    the pool (the layer subset, ranked heads included, as the notebook draws them), so one
    permutation's sets are nested as k grows. ``executor`` (``circuitcheck.executors``:
    None/"local", "ray", "ray:ADDRESS"): where the grid's rows run, cut over the workers.
    """
    import torch

    from .. import _validate
    from ..tasks import induction
    from ._patching_base import _head_mask

    if layers not in LAYER_SETS:
        raise CircuitCheckError(f"layers must be one of {list(LAYER_SETS)} (lower: layers "
                                f"0..L//2-1, upper: L//2..L-1), got {layers!r}")
    modes = tuple(check_mode(m) for m in modes)
    if not modes:
        raise CircuitCheckError("give at least one mode ('zero' or 'mean')")
    ks = tuple(int(_validate.count(k, "k", minimum=0)) for k in ks)
    lags = tuple(int(_validate.count(g, "lag", minimum=2)) for g in lags)
    n_permutations = _validate.count(n_permutations, "n_permutations")
    if not ks or not lags or len(set(ks)) != len(ks) or len(set(lags)) != len(lags):
        raise CircuitCheckError(f"ks and lags must be non-empty lists of distinct values, got "
                                f"ks={list(ks)}, lags={list(lags)}")
    ex = get_executor(executor)
    if not ex.is_local():
        load_spec(model)  # a model the workers cannot reload is refused before any run
    L = model.cfg.n_layers
    lo, hi = {"all": (0, L), "lower": (0, L // 2), "upper": (L // 2, L)}[layers]
    ranked, source = _ranking(model, scores, heads, n, seed)
    ranked = [h for h in ranked if lo <= h[0] < hi]
    pool = [(l, h) for l in range(lo, hi) for h in range(model.cfg.n_heads)]
    if max(ks) > len(ranked):
        raise CircuitCheckError(f"k = {max(ks)} is more than the {len(ranked)} ranked heads in "
                                f"the {layers} layers; use smaller ks")
    rng = np.random.default_rng(seed)
    perms = [[pool[i] for i in rng.permutation(len(pool))] for _ in range(n_permutations)]
    masks = torch.stack([_head_mask(model, ranked[:k]) if k else
                         torch.zeros(L, model.cfg.n_heads, dtype=torch.bool) for k in ks]
                        + [_head_mask(model, p[:k]) if k else
                           torch.zeros(L, model.cfg.n_heads, dtype=torch.bool)
                           for p in perms for k in ks])
    clean = torch.zeros(1, *masks.shape[1:], dtype=torch.bool)
    masks = torch.cat([clean, masks])
    K = len(ks)
    chosen, rand, loss0 = {}, {}, {}
    remote = {} if ex.is_local() else attention_grid(
        ex, model, masks, [(lag, mode) for lag in lags for mode in modes], n, seed, batch_size)
    for lag in lags:
        enc = None if remote else induction(model, n, seq_len=lag, seed=seed).encode(model)
        for mode in modes:
            logprob = remote[(lag, mode)] if remote else run_attention_ablation(
                model, enc, masks, mode, batch_size=batch_size).logprob.numpy()
            loss = -logprob.astype(float)  # [1 + K + P*K, N]
            inc = loss[1:] - loss[0]
            loss0[lag] = loss[0]
            chosen[(mode, lag)] = inc[:K]
            rand[(mode, lag)] = inc[K:].reshape(n_permutations, K, -1).transpose(1, 0, 2)
    return AblationCurve(ks, lags, modes, layers, tuple(ranked), chosen, rand, loss0,
                         tuple(tuple(p[:max(ks)]) for p in perms), source, seed, confidence)


__all__ = ["AblationCurve", "ablation_curve", "read_scores_csv"]
