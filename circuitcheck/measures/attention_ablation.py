"""Attention-score ablation: heads' attention patterns zeroed or made uniform, compared with
random head sets, and the ``attention_ablation`` claim's measurement."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..circuit import Head
from ..errors import CircuitCheckError
from ..interventions.attention import check_mode, run_attention_ablation
from ..stats import bootstrap_ci
from ..tasks import EncodedTask, Task
from ._measurement import Measurement
from ._result import ResultProtocol, jsonable
from ._patching_base import _head_mask, _heads, _seed, _setup
from .metrics import Metric


@dataclass(frozen=True, eq=False)
class AttentionAblation(ResultProtocol):
    """The task with ``heads``' attention ablated (``mode``) vs the clean run, per prompt.

    ``loss_*`` is the copying loss, the cross-entropy -log p(answer) at the last token;
    ``metric_*`` the task metric (``metric``).
    """

    heads: tuple[Head, ...]
    mode: str
    metric: str
    loss_clean: np.ndarray = field(repr=False)
    loss_ablated: np.ndarray = field(repr=False)
    metric_clean: np.ndarray = field(repr=False)
    metric_ablated: np.ndarray = field(repr=False)

    @property
    def loss_increase(self) -> float:
        return float(np.mean(self.loss_ablated - self.loss_clean))

    @property
    def value(self) -> float:
        """The mean copying-loss increase (nats): ``loss_increase``."""
        return self.loss_increase

    @property
    def ci_low(self) -> float:
        """NaN: one ablation reports no interval (``compare_to_random`` does)."""
        return float("nan")

    ci_high = ci_low

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"heads": [list(h) for h in self.heads], "mode": self.mode,
                         "metric": self.metric, "value": self.value,
                         "loss_clean": float(np.mean(self.loss_clean)),
                         "loss_ablated": float(np.mean(self.loss_ablated)),
                         "metric_clean": float(np.mean(self.metric_clean)),
                         "metric_ablated": float(np.mean(self.metric_ablated))})

    def table(self):
        import pandas as pd

        return pd.DataFrame({"loss_clean": self.loss_clean, "loss_ablated": self.loss_ablated,
                             "metric_clean": self.metric_clean,
                             "metric_ablated": self.metric_ablated})

    def summary(self) -> str:
        return (f"attention ablation ({self.mode}) of {len(self.heads)} heads: loss "
                f"{self.value:+.3f} nats")


def _default_metric(enc: EncodedTask, metric: "str | Metric | None") -> "str | Metric":
    return metric if metric is not None else ("logit_diff" if enc.wrong is not None
                                              else "logprob")


def ablate_attention(model: Any, task: Task, heads: Any, *, mode: str = "zero",
                     metric: "str | Metric | None" = None, batch_size: int | None = None
                     ) -> AttentionAblation:
    """Ablate the attention scores of ``heads`` together (see ``interventions.attention`` for
    the ``zero`` and ``mean`` modes) and compare the copying loss and the metric to clean."""
    import torch

    check_mode(mode)
    s = _setup(model, task, _default_metric(task.encode(model), metric), paired=False)
    hs = _heads(model, heads)
    masks = torch.stack([torch.zeros_like(_head_mask(model, hs)), _head_mask(model, hs)])
    r = run_attention_ablation(model, s.enc, masks, mode, batch_size=batch_size)
    loss = -r.logprob.numpy().astype(float)
    m = s.metric(r)
    return AttentionAblation(tuple(hs), mode, s.metric.name, loss[0], loss[1], m[0], m[1])


@dataclass(frozen=True, eq=False)
class RandomComparison(ResultProtocol):
    """The copying-loss increase from ablating ``heads`` vs ablating random head sets of the
    same size. ``chosen`` [N] and ``random`` [n_repeats, N] are per-prompt increases in
    -log p(answer); ``p_value`` = (1 + #random sets with a mean increase ≥ the chosen one's)
    / (1 + n_repeats)."""

    heads: tuple[Head, ...]
    mode: str
    chosen: np.ndarray = field(repr=False)
    random: np.ndarray = field(repr=False)
    random_sets: tuple[tuple[Head, ...], ...] = field(repr=False, default=())
    loss_clean: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    seed: int = 0

    @property
    def chosen_effect(self) -> float:
        return float(self.chosen.mean())

    @property
    def random_effects(self) -> np.ndarray:
        """Mean increase of each random set: [n_repeats]."""
        return self.random.mean(1)

    @property
    def random_mean(self) -> float:
        return float(self.random_effects.mean())

    @property
    def random_std(self) -> float:
        return float(self.random_effects.std(ddof=1)) if len(self.random) > 1 else 0.0

    @property
    def p_value(self) -> float:
        hits = int((self.random_effects >= self.chosen_effect).sum())
        return (1 + hits) / (1 + len(self.random))

    @property
    def excess(self) -> np.ndarray:
        """Per prompt: chosen increase minus the mean random increase."""
        return self.chosen - self.random.mean(0)

    @property
    def value(self) -> float:
        """The chosen heads' mean loss increase minus the random sets' mean."""
        return float(self.excess.mean())

    @property
    def ci_low(self) -> float:
        """NaN: read the interval from ``attention_ablation_effect`` (a bootstrap)."""
        return float("nan")

    ci_high = ci_low

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"heads": [list(h) for h in self.heads], "mode": self.mode,
                         "value": self.value, "chosen_effect": self.chosen_effect,
                         "random_mean": self.random_mean, "random_std": self.random_std,
                         "p_value": self.p_value, "n_random": len(self.random),
                         "seed": self.seed})

    def table(self):
        import pandas as pd

        return pd.DataFrame({"set": ["chosen"] + [f"random {i}" for i in range(len(self.random))],
                             "loss_increase": [self.chosen_effect, *self.random_effects]})

    def summary(self) -> str:
        return (f"attention ablation of {len(self.heads)} heads: {self.chosen_effect:+.3f} nats "
                f"vs random {self.random_mean:+.3f} (p = {self.p_value:.3g})")


def compare_to_random(model: Any, task: Task, heads: Any, *, n_repeats: int = 20,
                      seed: int = 0, mode: str = "zero", exclude_chosen: bool = True,
                      batch_size: int | None = None) -> RandomComparison:
    """Ablate ``heads``' attention and, for comparison, ``n_repeats`` random sets of as many
    heads (each the first k of a fresh random permutation of the other heads, or of all heads
    with ``exclude_chosen=False``), all in one batched sweep (Olsson et al. 2022's ablation of
    induction heads against random heads)."""
    import torch

    check_mode(mode)
    if not isinstance(n_repeats, int) or n_repeats < 1:
        raise CircuitCheckError(f"n_repeats must be a positive integer, got {n_repeats!r}")
    s = _setup(model, task, "logprob", paired=False)
    hs = _heads(model, heads)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    pool = [(l, h) for l in range(L) for h in range(H) if not (exclude_chosen and (l, h) in hs)]
    if len(pool) < len(hs):
        raise CircuitCheckError(
            f"cannot draw random sets of {len(hs)} heads from the {len(pool)} other heads; name "
            "fewer heads or pass exclude_chosen=False")
    rng = np.random.default_rng(seed)
    sets = tuple(tuple(pool[i] for i in sorted(rng.permutation(len(pool))[:len(hs)]))
                 for _ in range(n_repeats))
    masks = torch.stack([torch.zeros(L, H, dtype=torch.bool), _head_mask(model, hs)]
                        + [_head_mask(model, st) for st in sets])
    r = run_attention_ablation(model, s.enc, masks, mode, batch_size=batch_size)
    loss = -r.logprob.numpy().astype(float)
    inc = loss[1:] - loss[0]
    return RandomComparison(tuple(hs), mode, inc[0], inc[1:], sets, loss[0], seed)


def attention_ablation_grid(model: Any, task: Task, *, mode: str = "zero",
                            batch_size: int | None = None) -> np.ndarray:
    """Copying-loss increase from ablating each single head's attention: [layer, head]."""
    import torch

    check_mode(mode)
    s = _setup(model, task, "logprob", paired=False)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    masks = torch.cat([torch.zeros(1, L, H, dtype=torch.bool),
                       torch.eye(L * H, dtype=torch.bool).view(L * H, L, H)])
    r = run_attention_ablation(model, s.enc, masks, mode, batch_size=batch_size)
    loss = -r.logprob.numpy().astype(float)
    return (loss[1:] - loss[0]).mean(1).reshape(L, H)


def attention_ablation_effect(model: Any, task: Task, heads: Any, *, n_repeats: int = 20,
                              mode: str = "zero", seed: int | None = None,
                              confidence: float = 0.95, heatmap: bool = True,
                              batch_size: int | None = None) -> Measurement:
    """Copying-loss increase (nats of -log p(answer)) from ablating ``heads``' attention,
    minus the mean increase from ablating random head sets of the same size; the interval is
    a bootstrap over prompts with the random sets fixed."""
    sd = _seed(seed)
    hs = _heads(model, heads)
    rc = compare_to_random(model, task, hs, n_repeats=n_repeats, seed=sd, mode=mode,
                           batch_size=batch_size)
    excess = rc.excess
    n = len(excess)
    ci = bootstrap_ci(lambda i: excess[i].mean(1), n, confidence=confidence, seed=sd)
    details: dict[str, Any] = {"heads": [list(h) for h in hs], "mode": mode,
                               "random_effects": rc.random_effects.tolist(),
                               "p_value": rc.p_value}
    if heatmap:
        grid = attention_ablation_grid(model, task, mode=mode, batch_size=batch_size)
        details["heatmaps"] = {f"attention ablation ({mode})": {
            "data": grid.tolist(), "label": "copying-loss increase when the head's attention "
            f"is {mode}-ablated (nats)", "outline": [list(h) for h in hs]}}
    loss0 = float(rc.loss_clean.mean())
    return Measurement(
        kind="attention ablation effect", value=float(excess.mean()), ci=ci, per_prompt=excess,
        metric="copying loss", metric_description="-log p(answer) at 'end' (nats)",
        ablation=f"attention scores {mode}-ablated",
        baselines={"clean loss": loss0, "chosen ablated": loss0 + rc.chosen_effect,
                   "random ablated": loss0 + rc.random_mean},
        confidence=confidence, seed=sd, model=getattr(model, "cc_name", ""), task=task.name,
        details=details)
