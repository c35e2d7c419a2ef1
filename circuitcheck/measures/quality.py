"""How well the full model does a task, overall and per template group.

Before a circuit is claimed on a task, the model has to do the task. ``task_quality`` reads the
full (unablated) model once and breaks its logit difference, top-1 success and answer
probability down by the task's template groups (IOI's ``BABA-0`` ... ``ABBA-4``), so a template
the model fails on is seen — and can be dropped by name (``cc.tasks.ioi(..., drop_templates=)``)
with the reason written down, rather than averaged into a circuit's baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..tasks import Task


@dataclass(frozen=True)
class TaskQuality:
    """Per-prompt full-model metrics and their breakdown by template group."""

    groups: tuple[str, ...]  # per prompt ("all" when the task has no groups)
    logit_diff: np.ndarray | None  # [N]; None without wrong answers
    top1: np.ndarray  # [N] 0/1
    prob: np.ndarray  # [N]

    @property
    def value(self) -> float:
        """Top-1 accuracy of the full model over all prompts."""
        return float(self.top1.mean())

    def table(self) -> Any:
        """One row per template group (and ``all``): n, mean logit diff, top-1, p(answer)."""
        import pandas as pd

        frame = pd.DataFrame({"group": self.groups, "top1": self.top1, "prob": self.prob})
        if self.logit_diff is not None:
            frame["logit_diff"] = self.logit_diff
        agg = {"n": ("top1", "size"), "top1": ("top1", "mean"), "prob": ("prob", "mean")}
        if self.logit_diff is not None:
            agg["logit_diff"] = ("logit_diff", "mean")
            agg["logit_diff_min"] = ("logit_diff", "min")
        per = frame.groupby("group", sort=True).agg(**agg)
        per.loc["all"] = frame.assign(group="all").groupby("group").agg(**agg).iloc[0]
        return per

    def failing(self, *, top1_below: float = 0.5) -> list[str]:
        """Template groups whose top-1 accuracy is below ``top1_below`` (or whose mean logit
        difference is not positive)."""
        per = self.table().drop(index="all")
        bad = per["top1"] < top1_below
        if "logit_diff" in per:
            bad |= per["logit_diff"] <= 0
        return [str(g) for g in per.index[bad]]

    def per_prompt(self, metric: str) -> np.ndarray:
        """The per-prompt values of ``metric``: ``top1``, ``prob`` or ``logit_diff``."""
        values = {"top1": self.top1, "prob": self.prob, "logit_diff": self.logit_diff}
        if metric not in values:
            raise ValueError(f"task quality metric {metric!r} is not one of top1, prob, "
                             "logit_diff")
        if values[metric] is None:
            raise ValueError("metric 'logit_diff' needs a task with wrong answers (IOI, "
                             "greater-than, ...); use top1 or prob")
        return np.asarray(values[metric], dtype=float)

    def intervals(self, metric: str = "top1", *, confidence: float = 0.95
                  ) -> dict[str, tuple[int, float, float, float]]:
        """Per template group: (n, mean, low, high) of ``metric``, simultaneous over groups.

        Each group's interval is at ``1 - (1 - confidence) / G`` (Bonferroni over the ``G``
        groups), so "every template is done" is decided at ``confidence`` as a whole. Top-1
        rates use Wilson intervals (never zero-width at 8/8); ``prob`` and ``logit_diff`` a
        Student-t interval of the mean. A group of one prompt has no interval (NaN).
        """
        from ..stats import t_quantile, wilson_ci

        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        x = self.per_prompt(metric)
        names = sorted(set(self.groups))
        level = 1 - (1 - confidence) / len(names)
        out: dict[str, tuple[int, float, float, float]] = {}
        for g in names:
            v = x[np.asarray(self.groups) == g]
            n, mean = int(v.size), float(v.mean())
            if n < 2:
                out[g] = (n, mean, float("nan"), float("nan"))
            elif metric == "top1":
                lo, hi = wilson_ci(np.array(v.sum()), np.array(n), level)
                out[g] = (n, mean, float(lo), float(hi))
            else:
                half = t_quantile(1 - (1 - level) / 2, n - 1) * float(v.std(ddof=1)) / n ** 0.5
                lo, hi = mean - half, mean + half
                if metric == "prob":  # a probability's interval stays in [0, 1]
                    lo, hi = max(lo, 0.0), min(hi, 1.0)
                out[g] = (n, mean, lo, hi)
        return out

    def summary(self) -> str:
        return self.table().round(3).to_string()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "task_quality", "value": self.value,
                "groups": self.table().reset_index().to_dict(orient="records")}

    def __bool__(self) -> bool:
        raise TypeError("a TaskQuality is not a verdict; read .value, .table() or .failing()")


def task_quality(model: Any, task: Task, *, batch_size: int | None = None) -> TaskQuality:
    """The full model's logit difference, top-1 success and p(answer) on every prompt."""
    import torch

    from ..interventions import Variants, run_variants

    enc = task.encode(model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    full = Variants(torch.ones(1, L, H, dtype=torch.bool))
    reads = ("logit", "wrong_logit", "logprob", "correct") if enc.wrong is not None else (
        "logit", "logprob", "correct")
    r = run_variants(model, enc, full, None, batch_size=batch_size, reads=reads)
    diff = None
    if r.wrong_logit is not None:
        diff = (r.logit[0] - r.wrong_logit[0]).numpy().astype(float)
    groups = tuple(task.groups) if task.groups is not None else ("all",) * len(task)
    return TaskQuality(groups=groups, logit_diff=diff,
                       top1=r.correct[0].numpy().astype(float),
                       prob=r.logprob[0].exp().numpy().astype(float))
