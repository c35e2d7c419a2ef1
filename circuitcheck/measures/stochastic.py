"""Monte-Carlo stochastic ablation: which heads matter, with intervals and early stopping.

Each *trial* is one random keep-mask over all heads (each head kept with probability
``keep_prob``, otherwise ablated) evaluated on one prompt (prompts are cycled). Two regimes:

- **importance** (many heads ablated, ``keep_prob`` ≈ 0.3): how much more often the task
  succeeds when the head is kept;
- **exclusion** (few heads ablated, ``keep_prob`` ≈ 0.85): how much more often it fails when
  the head is ablated.

Both are reported as effects on the metric (top-1 success by default) with confidence
intervals, estimated by least squares of the per-trial metric on the keep-mask (plus prompt
fixed effects when there are trials to spare). The regression uses every trial for every head
and removes the other heads' variance, so it needs far fewer trials than comparing rates one
head at a time; the rates with / without each head (``rate_kept``, ``rate_ablated``) and the
notebook's normalised scores (``rate_kept / rate - 1`` for importance,
``fail_rate_ablated / fail_rate - 1`` for exclusion) and its own counting scores
(``HeadEffects.notebook``, see ``_notebook_scores``: Σ mask over successes / Σ (1 − mask) over
failures, each normalised to sum 1) are reported too.

A trial is one (mask, prompt) row. By default each mask meets one prompt (prompts cycled):
the most independent masks per forward. ``trial="notebook"`` runs each mask on every prompt,
as seed 000's loop does (``trials`` then counts rows, i.e. masks × prompts); the estimator is
the same, with fewer distinct masks for the same budget.

Trials run in batches of many masks per forward pass, in rounds that double in size; with a
claim to decide (``heads=`` or ``top=``), sampling stops once simultaneous intervals
(Bonferroni over heads and over the planned looks) separate the claimed heads from the rest,
or prove one of them is not among the top.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from .. import _settings
from ..circuit import Head, format_head, parse_head
from ..errors import CircuitCheckError
from ..interventions import Ablation, Variants, ablation_values, run_variants
from ..stats import wilson_ci
from ..tasks import Task
from ._result import ResultProtocol, jsonable
from ._distributed import round_metrics, trial_context
from ._calibration import TARGETS, calibrate, measure_ends
from ._notebook_scores import notebook_scores
from .metrics import get_metric


@dataclass(frozen=True, eq=False)
class HeadEffects(ResultProtocol):
    """One regime's per-head estimates, each an [n_layers, n_heads] array."""

    regime: str  # "importance" or "exclusion"
    keep_prob: float
    effect: np.ndarray  # metric gained by keeping the head (regression coefficient)
    ci_low: np.ndarray
    ci_high: np.ndarray
    rate_kept: np.ndarray  # mean metric over trials that kept the head
    rate_ablated: np.ndarray
    rate_kept_ci: tuple[np.ndarray, np.ndarray]
    normalized: np.ndarray  # the notebook's normalised score
    trials: int
    confidence: float
    rate: float = float("nan")  # mean metric over the regime's trials
    degenerate: str | None = None  # why the regime's trials cannot inform, in words
    notebook: np.ndarray | None = None  # seed 000's counting score (sums to 1); binary metrics

    def ranking(self) -> list[Head]:
        H = self.effect.shape[1]
        return [(int(i // H), int(i % H)) for i in np.argsort(-self.effect, axis=None, kind="stable")]

    def __getitem__(self, head: Any) -> float:
        return float(self.effect[parse_head(head)])

    def table(self):
        import pandas as pd

        return pd.DataFrame([{"head": format_head(h), "effect": self[h],
                              "ci_low": float(self.ci_low[h]), "ci_high": float(self.ci_high[h]),
                              "rate_kept": float(self.rate_kept[h]),
                              "rate_ablated": float(self.rate_ablated[h]),
                              "normalized": float(self.normalized[h]),
                              **({"notebook": float(self.notebook[h])}
                                 if self.notebook is not None else {})}
                             for h in self.ranking()])

    @property
    def values(self) -> np.ndarray:
        """[layer, head] effects (``effect`` is the old name, kept as an alias)."""
        return self.effect

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"regime": self.regime, "keep_prob": self.keep_prob,
                         "values": self.effect, "ci_low": self.ci_low, "ci_high": self.ci_high,
                         "rate_kept": self.rate_kept, "rate_ablated": self.rate_ablated,
                         "normalized": self.normalized, "trials": self.trials,
                         "confidence": self.confidence, "rate": self.rate,
                         "degenerate": self.degenerate, "notebook": self.notebook})

    def summary(self) -> str:
        if self.degenerate:
            return (f"{self.regime} regime DEGENERATE (keep_prob {self.keep_prob:.3g}, "
                    f"{self.trials} trials): {self.degenerate}; its effects are not findings")
        best = ", ".join(f"{format_head(h)} {self[h]:+.3f}" for h in self.ranking()[:3])
        return (f"{self.regime} effects (keep_prob {self.keep_prob:.3g}, {self.trials} trials, "
                f"mean metric {self.rate:.3g}); top {best}")


@dataclass(frozen=True, eq=False)
class StochasticAblation(ResultProtocol):
    """Result of ``cc.stochastic_ablation``: both regimes, the raw trials, how it stopped."""

    importance: HeadEffects | None
    exclusion: HeadEffects | None
    raw: dict[str, dict[str, np.ndarray]] = field(repr=False)  # regime -> masks/metric/prompt
    metric: str
    ablation: str
    seed: int
    budget: int
    decision: str | None = None  # "held"/"failed"/"undecided" for a claim; "stable": stable_top
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        raise AttributeError("a stochastic ablation has no single value; read .importance / "
                             ".exclusion (HeadEffects: .values, .ci_low, .ci_high)")

    values = ci_low = ci_high = value

    def table(self):
        """Both regimes' per-head tables, with a ``regime`` column."""
        import pandas as pd

        parts = [r.table().assign(regime=r.regime) for r in (self.importance, self.exclusion)
                 if r is not None]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"metric": self.metric, "ablation": self.ablation, "seed": self.seed,
                         "budget": self.budget, "trials_used": self.trials_used,
                         "decision": self.decision,
                         "importance": self.importance.to_dict() if self.importance is not None else None,
                         "exclusion": self.exclusion.to_dict() if self.exclusion is not None else None})

    def summary(self) -> str:
        parts = [r.summary() for r in (self.importance, self.exclusion) if r is not None]
        cal = self.notes.get("calibration")
        how = ""
        if cal:
            how = "; keep probabilities calibrated: " + ", ".join(
                f"{k} {v['keep_prob']:.3g} (target mean {v['target']:.3g}, probed "
                f"{v['measured']:.3g})" for k, v in cal["regimes"].items())
        return (f"stochastic ablation ({self.ablation}, {self.metric}, {self.trials_used} trials"
                f"{', ' + self.decision if self.decision else ''}): " + "; ".join(parts) + how)

    @property
    def trials_used(self) -> int:
        return int(sum(len(r["metric"]) for r in self.raw.values()))

    def select(self, percentile: float = 90.0, by: str = "importance",
               score: str = "effect") -> list[Head]:
        """Outlier heads: score above the given percentile of all heads.

        ``by``: a regime, or ``"union"`` — the heads that are outliers in either regime, as the
        notebook selects them (importance outliers first). ``score``: ``"effect"`` (the
        regression estimate) or ``"notebook"`` (seed 000's counting score; binary metrics)."""
        if by == "union":
            ran = [r for r in ("importance", "exclusion") if getattr(self, r) is not None]
            picked = [h for r in ran for h in self.select(percentile, r, score)]
            return list(dict.fromkeys(picked))
        vals = self._scores(by, score)
        cut = np.nanpercentile(vals, percentile)
        return [h for h in self.ranked(by, score) if vals[h] > cut]

    def ranked(self, by: str = "importance", score: str = "effect") -> list[Head]:
        """Every head, best first, by regime ``by``'s ``score`` (see ``select``)."""
        vals = np.nan_to_num(self._scores(by, score), nan=-np.inf)
        H = vals.shape[1]
        return [(int(i // H), int(i % H)) for i in np.argsort(-vals, axis=None, kind="stable")]

    def _scores(self, by: str, score: str) -> np.ndarray:
        if score not in ("effect", "notebook"):
            raise CircuitCheckError(f"score must be 'effect' or 'notebook', got {score!r}")
        r = self._regime(by)
        vals = r.effect if score == "effect" else r.notebook
        if vals is None:
            raise CircuitCheckError(f"the notebook's counting scores need a success/failure per "
                                    f"trial; metric {self.metric!r} is not binary: use "
                                    f"metric='top1' or score='effect'")
        return vals

    def _regime(self, by: str) -> HeadEffects:
        r = getattr(self, by, None) if by in ("importance", "exclusion") else None
        if r is None:
            ran = [k for k in ("importance", "exclusion") if getattr(self, k) is not None]
            raise CircuitCheckError(f"no {by!r} estimates in this result; ran: {ran}")
        return r

    def save(self, path: str | Path) -> Path:
        """Keep the raw trials (bit-packed masks, metric, prompt index) as a compressed .npz."""
        arrays: dict[str, np.ndarray] = {}
        for regime, r in self.raw.items():
            arrays[f"{regime}_masks"] = np.packbits(r["masks"].astype(bool), axis=-1)
            arrays[f"{regime}_shape"] = np.array(r["masks"].shape)
            arrays[f"{regime}_metric"] = r["metric"]
            arrays[f"{regime}_prompt"] = r["prompt"]
            arrays[f"{regime}_keep_prob"] = np.array(r["keep_prob"])
        model = self.notes.get("model", {})
        arrays["meta"] = np.array([self.metric, self.ablation, str(self.seed),
                                   str(model.get("name", "")), str(self.notes.get("trial", ""))])
        arrays["model_shape"] = np.array(model.get("shape", []), dtype=np.int64)
        path = Path(path)
        np.savez_compressed(path, **arrays)
        return path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz")

    @staticmethod
    def load_meta(path: str | Path) -> dict[str, Any]:
        """What a saved run was: metric, ablation, seed, model name and shape, trial kind."""
        data = np.load(path, allow_pickle=False)
        meta = [str(x) for x in data["meta"]] + ["", ""]
        shape = [int(x) for x in data["model_shape"]] if "model_shape" in data else []
        return {"metric": meta[0], "ablation": meta[1], "seed": int(meta[2]),
                "model": meta[3], "trial": meta[4],
                "shape": dict(zip(("n_layers", "n_heads", "d_model", "n_ctx"), shape))}

    @staticmethod
    def load_raw(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
        """The raw trials of a saved run: regime -> masks [T, L, H] bool, metric, prompt."""
        data = np.load(path, allow_pickle=False)
        out = {}
        for regime in ("importance", "exclusion"):
            if f"{regime}_masks" in data:
                shape = tuple(data[f"{regime}_shape"])
                masks = np.unpackbits(data[f"{regime}_masks"], axis=-1)[..., : shape[-1]]
                out[regime] = {"masks": masks.astype(bool).reshape(shape),
                               "metric": data[f"{regime}_metric"],
                               "prompt": data[f"{regime}_prompt"],
                               "keep_prob": float(data[f"{regime}_keep_prob"])}
        return out


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def estimate(masks: np.ndarray, metric: np.ndarray, prompt: np.ndarray, keep_prob: float,
             regime: str, confidence: float = 0.95,
             ends: tuple[float, float] | None = None) -> HeadEffects:
    """Per-head effects from trials: masks [T, L, H] bool, metric [T], prompt [T] ints.
    ``ends``: (every head ablated, full model) mean metric, for the degeneracy check."""
    T, L, H = masks.shape
    X = masks.reshape(T, L * H).astype(float)
    y = metric.astype(float)
    n_prompts = int(prompt.max()) + 1 if len(prompt) else 1
    cols = [np.ones((T, 1)), X]
    if n_prompts > 1 and T > 5 * (L * H + n_prompts):
        fe = np.zeros((T, n_prompts - 1))
        idx = prompt > 0
        fe[np.nonzero(idx)[0], prompt[idx] - 1] = 1.0
        cols.append(fe)
    D = np.hstack(cols)
    k = D.shape[1]
    kept = X.sum(0)
    ablated = T - kept
    rate_kept = (X * y[:, None]).sum(0) / np.maximum(kept, 1)
    rate_abl = ((1 - X) * y[:, None]).sum(0) / np.maximum(ablated, 1)
    z = _z(confidence)
    if T > k + 10:
        beta, *_ = np.linalg.lstsq(D, y, rcond=None)
        resid = y - D @ beta
        bread = np.linalg.pinv(D.T @ D)
        meat = (D * resid[:, None] ** 2).T @ D
        cov = bread @ meat @ bread * T / (T - k)  # HC1 robust covariance
        effect = beta[1:1 + L * H]
        se = np.sqrt(np.maximum(np.diag(cov)[1:1 + L * H], 0))
    else:  # too few trials for the regression: difference of means, Welch intervals
        effect = rate_kept - rate_abl
        var_k = (X * (y[:, None] - rate_kept) ** 2).sum(0) / np.maximum(kept - 1, 1)
        var_a = (((1 - X) * (y[:, None] - rate_abl) ** 2).sum(0)) / np.maximum(ablated - 1, 1)
        se = np.sqrt(var_k / np.maximum(kept, 1) + var_a / np.maximum(ablated, 1))
    rate = float(y.mean()) if T else float("nan")
    if regime == "importance":
        normalized = rate_kept / rate - 1 if rate else np.full(L * H, np.nan)
    else:
        fail = 1 - rate
        normalized = (1 - rate_abl) / fail - 1 if fail else np.full(L * H, np.nan)
    if np.isin(y, (0.0, 1.0)).all():
        lo, hi = wilson_ci(rate_kept * kept, kept, confidence)
    else:
        var_kept = (X * (y[:, None] - rate_kept) ** 2).sum(0) / np.maximum(kept - 1, 1)
        half = z * np.sqrt(var_kept / np.maximum(kept, 1))
        lo, hi = rate_kept - half, rate_kept + half
    shape = (L, H)
    return HeadEffects(regime, keep_prob, effect.reshape(shape), (effect - z * se).reshape(shape),
                       (effect + z * se).reshape(shape), rate_kept.reshape(shape),
                       rate_abl.reshape(shape), (lo.reshape(shape), hi.reshape(shape)),
                       np.asarray(normalized).reshape(shape), T, confidence, rate,
                       degenerate(y, ends), notebook_scores(masks, y, regime))


#: The informative range of a regime's mean metric, as a fraction of the way from every head
#: ablated (0) to the full model (1); outside it nearly every trial ends the same way.
INFORMATIVE = (0.05, 0.95)


def degenerate(y: np.ndarray, ends: tuple[float, float] | None = None) -> str | None:
    """Why trials with metric values ``y`` cannot inform per-head effects, or None.

    Binary metrics (top-1): fewer than 5% successes or failures, or fewer than 10 of the rarer
    outcome. Otherwise, with ``ends`` = (all heads ablated, full model) mean metric: a mean
    outside ``INFORMATIVE`` of the way between them, or ends too close to tell apart."""
    if not len(y):
        return "no trials"
    rate = float(np.mean(y))
    if np.isin(y, (0.0, 1.0)).all():
        rare = min(rate, 1 - rate)
        if rare < INFORMATIVE[0] or rare * len(y) < 10:
            word = "succeeds" if rate < 0.5 else "fails"
            return (f"the task {word} in only {rare:.1%} of trials ({round(rare * len(y))} of "
                    f"{len(y)}), so keeping or ablating one head rarely changes the outcome")
    if ends is not None:
        r0, r1 = ends
        if not abs(r1 - r0) > 1e-9 * max(abs(r0), abs(r1), 1.0):
            return (f"ablating every head leaves the mean metric where the full model has it "
                    f"({r0:.3g} vs {r1:.3g})")
        frac = (rate - r0) / (r1 - r0)
        if not INFORMATIVE[0] <= frac <= INFORMATIVE[1]:
            return (f"the mean metric {rate:.3g} is {frac:.0%} of the way from every head "
                    f"ablated ({r0:.3g}) to the full model ({r1:.3g}), outside the informative "
                    f"{INFORMATIVE[0]:.0%}-{INFORMATIVE[1]:.0%}")
    return None


def _decide(eff: HeadEffects, claimed: list[Head], top: int) -> str:
    """held: every claimed head's interval is above every other head's; failed: some other
    head is surely above some claimed head (then the claimed set is not the top); else undecided.
    With ``claimed`` empty, the ``top`` best heads by point estimate are tested."""
    ranking = eff.ranking()
    claimed = claimed or ranking[:top]
    others = [h for h in ranking if h not in claimed]
    if not others:
        return "held"
    lo = min(eff.ci_low[h] for h in claimed)
    hi_others = max(eff.ci_high[h] for h in others)
    if lo > hi_others:
        return "held"
    # a head outside the claim that is surely better than a claimed one
    lo_others = max(eff.ci_low[h] for h in others)
    hi_claimed = min(eff.ci_high[h] for h in claimed)
    if len(claimed) <= top and lo_others > hi_claimed:
        return "failed"
    return "undecided"


def stochastic_ablation(
    model: Any, task: Task, *, keep_prob: "float | str" = "auto",
    exclusion_keep_prob: "float | str | None" = "auto",
    trials: int = 4096, seed: int | None = None, ablation: str = "mean",
    metric: str = "top1", reference: str | None = None, heads: Iterable[Any] | None = None,
    top: int | None = None, by: str = "importance", confidence: float = 0.95,
    min_trials: int = 256, batch_size: int | None = None, progress: Any = None,
    calibration_trials: int = 64, trial: str = "prompt", executor: Any = None,
    stable_top: int | None = None,
) -> StochasticAblation:
    """Score every head by random ablation; ``trials`` is the budget per regime.

    ``keep_prob`` / ``exclusion_keep_prob`` ``"auto"`` (the default) calibrates each on the
    task (``calibrate``): a short bisection (``calibration_trials`` trials per probe, the same
    random draws at every probe) for the keep probability at which the mean metric is 30%
    (importance) or 70% (exclusion) of the way from every head ablated to the full model, where
    trials end both ways often enough to inform. Fixed keep probabilities that suit a 2-layer
    model (0.3 / 0.85) leave a 30-layer model failing almost every importance trial. The choice
    and its probes are in ``notes["calibration"]``; each regime states plainly when its trials
    are degenerate (``HeadEffects.degenerate``, also for keep probabilities given by hand).
    ``exclusion_keep_prob=None`` skips the exclusion regime. Any metric works (top-1, logit
    difference, probability, ...): the estimator is least squares on the per-trial metric.

    With ``heads`` (the claim "these are the most important heads") or ``top`` (find a
    separated top-k), sampling in regime ``by`` stops as soon as the claim is decided at
    ``confidence`` (intervals corrected for all heads and every look); the other regime then
    gets the same number of trials. Without a claim the whole budget is used.

    ``trial``: ``"prompt"`` (each mask on one prompt, prompts cycled) or ``"notebook"`` (each
    mask on every prompt, seed 000's loop; budgets round up to whole masks). The model's name
    and shape go with the raw trials (``notes["model"]``, ``save``/``load_meta``).
    ``executor``: where the trial rounds run (``circuitcheck.executors``: None/"local", "ray",
    "ray:ADDRESS"); the draws, statistics and stopping stay here, so results do not change.
    """
    import torch

    from .. import _validate

    if keep_prob != "auto":
        keep_prob = _validate.open_unit(keep_prob, "keep_prob")
    if exclusion_keep_prob not in (None, "auto"):
        exclusion_keep_prob = _validate.open_unit(exclusion_keep_prob, "exclusion_keep_prob")
    trials = _validate.count(trials, "trials")
    min_trials = _validate.count(min_trials, "min_trials")
    confidence = _validate.open_unit(confidence, "confidence")
    seed = _validate.seed(seed)
    if trial not in ("prompt", "notebook"):
        raise CircuitCheckError(f"trial must be 'prompt' (one mask per prompt) or 'notebook' "
                                f"(each mask on every prompt), got {trial!r}")
    if by not in ("importance", "exclusion"):
        raise CircuitCheckError(f"by must be 'importance' or 'exclusion', got {by!r}")
    seed = _settings.seed() if seed is None else seed
    ex, ctx = trial_context(executor, model, task, ablation, reference, metric, batch_size)
    enc = task.encode(model)
    m = get_metric(metric, has_wrong=enc.wrong is not None, has_sets=enc.good is not None)
    values = ablation_values(model, enc, Ablation.parse(ablation), reference)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    claimed = [parse_head(h) for h in heads] if heads is not None else []
    for layer, h in claimed:
        if not (0 <= layer < L and 0 <= h < H):
            raise CircuitCheckError(f"head {layer}.{h} is out of range: the model has {L} layers "
                                    f"and {H} heads per layer")
    deciding = bool(claimed) or top is not None
    if stable_top is not None:
        stable_top = _validate.count(stable_top, "stable_top")
        if deciding:
            raise CircuitCheckError("stable_top stops a run without a claim; with heads= or "
                                    "top= the claim's own decision stops it: drop stable_top")
    top = top or len(claimed) or 1
    ends = measure_ends(model, enc, values, m, batch_size)
    wanted = {"importance": keep_prob}
    if exclusion_keep_prob is not None:
        wanted["exclusion"] = exclusion_keep_prob
    calibration: dict[str, Any] = {}
    for regime, p in list(wanted.items()):
        if p == "auto":
            wanted[regime], calibration[regime] = calibrate(
                model, enc, values, m, TARGETS[regime], ends, seed=seed + 10,
                trials=calibration_trials, batch_size=batch_size)
    regimes = list(wanted.items())
    regimes.sort(key=lambda r: r[0] != by)  # the deciding regime first
    bar = _progress(progress, trials * len(regimes))
    raw: dict[str, dict[str, np.ndarray]] = {}
    effects: dict[str, HeadEffects] = {}
    decision = None
    budget = trials
    looks = max(1, math.ceil(math.log2(max(trials / min_trials, 1))) + 1)
    for regime, p in regimes:
        gen = torch.Generator().manual_seed(seed + (0 if regime == "importance" else 1))
        masks_all = np.zeros((0, L, H), dtype=bool)
        metric_all = np.zeros(0)
        prompt_all = np.zeros(0, dtype=np.int64)
        decides = (deciding or stable_top is not None) and regime == by
        previous: set[Head] | None = None
        target = min(min_trials, budget) if decides else budget
        while True:
            n_new = target - len(metric_all)
            if trial == "notebook":  # whole masks, each on every prompt
                n_masks = -(-n_new // enc.n)
                masks = (torch.rand(n_masks, L, H, generator=gen) < p).repeat_interleave(enc.n, 0)
                prompt = torch.arange(enc.n).repeat(n_masks)
                target = len(metric_all) + len(prompt)
            else:
                masks = torch.rand(n_new, L, H, generator=gen) < p
                prompt = torch.arange(len(metric_all), target) % enc.n
            new = round_metrics(ex, ctx, model, enc, values, m, masks, prompt,
                                batch_size=batch_size, progress=bar)
            masks_all = np.concatenate([masks_all, masks.numpy()])
            metric_all = np.concatenate([metric_all, new])
            prompt_all = np.concatenate([prompt_all, prompt.numpy()])
            if not decides:
                break
            if stable_top is not None:
                ranked = set(estimate(masks_all, metric_all, prompt_all, p, regime).ranking()
                             [:stable_top])
                decision = "stable" if ranked == previous else "undecided"
                previous = ranked
            else:
                corrected = 1 - (1 - confidence) / (looks * L * H)
                decision = _decide(estimate(masks_all, metric_all, prompt_all, p, regime,
                                            corrected), claimed, top)
            if decision != "undecided" or target >= budget:
                break
            target = min(2 * target, budget)
        if decides:
            budget = len(metric_all)  # the other regime gets as many trials
        raw[regime] = {"masks": masks_all, "metric": metric_all, "prompt": prompt_all,
                       "keep_prob": p}
        effects[regime] = estimate(masks_all, metric_all, prompt_all, p, regime, confidence,
                                   ends)
    if bar is not None:
        bar.close()
    return StochasticAblation(effects.get("importance"), effects.get("exclusion"), raw, m.name,
                              values.describe(), seed, trials, decision,
                              {"looks": looks, "claimed": [list(h) for h in claimed], "top": top,
                               "stable_top": stable_top,
                               "trial": trial, "model": _model_meta(model), "executor": ex.name,
                               "ends": {"all ablated": ends[0], "full": ends[1]},
                               **({"calibration": {"regimes": calibration,
                                                   "trials": sum(len(c["probes"]) *
                                                                 calibration_trials
                                                                 for c in calibration.values())}}
                                  if calibration else {})})


def _model_meta(model: Any) -> dict[str, Any]:
    """The model's name and shape, stored with the raw trials."""
    cfg = model.cfg
    name = getattr(model, "cc_name", None) or getattr(cfg, "model_name", "") or ""
    return {"name": str(name), "shape": [int(cfg.n_layers), int(cfg.n_heads),
                                         int(cfg.d_model), int(cfg.n_ctx)]}


def _progress(enabled: Any, total: int) -> Any:
    """A bar over the trials (``circuitcheck.progress``: auto by default), or None."""
    from ..progress import progress_bar

    ctx = progress_bar(enabled, total, "stochastic ablation", unit="trial")
    advance = ctx.__enter__()
    if advance is None:
        ctx.__exit__(None, None, None)
        return None

    class _Bar:
        def __call__(self, n: int) -> None:
            advance(n)

        def close(self) -> None:
            ctx.__exit__(None, None, None)

    return _Bar()


def compare_selection(model: Any, task: Task, heads: Sequence[Any], *, ablation: str = "mean",
                      metric: str = "top1", reference: str | None = None) -> dict[str, float]:
    """Mean metric of the full model, of only ``heads`` kept, and of only ``heads`` ablated."""
    import torch

    from ..circuit import Circuit

    enc = task.encode(model)
    m = get_metric(metric, has_wrong=enc.wrong is not None, has_sets=enc.good is not None)
    values = ablation_values(model, enc, Ablation.parse(ablation), reference)
    c = Circuit({"selected": list(heads)})
    c.validate(model, task)
    v = Variants.from_circuits(model, [c, c], [False, True])
    L, H = model.cfg.n_layers, model.cfg.n_heads
    rows = m(run_variants(model, enc, v, values))
    full = m(run_variants(model, enc, Variants(torch.ones(1, L, H, dtype=torch.bool)), None))
    return {"full": float(full.mean()), "retained_only": float(rows[0].mean()),
            "ablated_only": float(rows[1].mean())}
