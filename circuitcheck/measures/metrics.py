"""Per-prompt metrics read from a ``Readout``: logit difference, probability, top-1 success."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import CircuitCheckError, did_you_mean
from ..interventions import Readout


@dataclass(frozen=True)
class Metric:
    """A named per-prompt metric and how to describe it in a failure message."""

    name: str
    describe: str
    fn: Callable[[Readout], "np.ndarray"]
    needs_wrong: bool = False
    needs_sets: bool = False
    needs_reference: bool = False  # needs the full model's distribution (KL)
    reads: tuple[str, ...] = ()  # the Readout fields fn reads (the rest need not be computed)
    binary: bool = False  # 0/1 per prompt: intervals of its mean are at least Wilson intervals

    def __call__(self, readout: Readout) -> np.ndarray:
        return self.fn(readout)


def _logit_diff(r: Readout) -> np.ndarray:
    return (r.logit - r.wrong_logit).numpy().astype(float)


def _prob_diff(r: Readout) -> np.ndarray:
    good = r.good_prob.numpy().astype(float)
    return good if r.bad_prob is None else good - r.bad_prob.numpy().astype(float)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("logit_diff", "logit(answer) - logit(wrong_answer) at 'end'", _logit_diff, True,
               reads=("logit", "wrong_logit")),
        Metric("logit", "logit(answer) at 'end' (raw, as the induction notebook reads it)",
               lambda r: r.logit.numpy().astype(float), reads=("logit",)),
        Metric("prob", "p(answer) at 'end'", lambda r: r.logprob.exp().numpy().astype(float),
               reads=("logprob",)),
        Metric("logprob", "log p(answer) at 'end'", lambda r: r.logprob.numpy().astype(float),
               reads=("logprob",)),
        Metric("top1", "top-1 success (argmax = answer) at 'end'",
               lambda r: r.correct.numpy().astype(float), reads=("correct",), binary=True),
        Metric("prob_diff", "p(good tokens) - p(bad tokens) at 'end'", _prob_diff,
               needs_sets=True, reads=("good_prob", "bad_prob")),
        Metric("kl", "-KL(full model || variant) of the next-token distribution at 'end' "
               "(0 = the full model; use normalize='ablated')",
               lambda r: -r.kl.numpy().astype(float), needs_reference=True, reads=("kl",)),
    ]
}


def get_metric(name: "str | Metric", *, has_wrong: bool, has_sets: bool = False) -> Metric:
    """Look a metric up by name and check the task can feed it."""
    if isinstance(name, Metric):
        metric = name
    else:
        try:
            metric = METRICS[name]
        except KeyError:
            raise CircuitCheckError(
                f"unknown metric {name!r}{did_you_mean(str(name), METRICS)}; use one of {list(METRICS)}"
            ) from None
    if metric.needs_wrong and not has_wrong:
        raise CircuitCheckError(
            f"metric {metric.name!r} needs wrong answers; give the task `wrong_answers=[...]` "
            "or use metric='prob', 'logprob' or 'top1'"
        )
    if metric.needs_sets and not has_sets:
        raise CircuitCheckError(
            f"metric {metric.name!r} needs token sets; give the task `good_tokens=[...]` "
            "(and optionally `bad_tokens=[...]`), as cc.tasks.greater_than does"
        )
    return metric
