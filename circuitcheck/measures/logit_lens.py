"""The logit lens (nostalgebraist 2020): the residual stream at each prompt's last token after
every layer, decoded with the model's own final norm and unembedding, as if the model stopped
there. Per layer: the answer's logit difference (answer - wrong answer, or the answer's logit
minus the mean logit when the task has no wrong answers), the answer's rank among all tokens
(0 = top) and the top-1 rate. Stage 0 is the embedding (``blocks.0.hook_resid_pre``), stage
k the residual after layer k - 1, the last stage the final residual (the model's own logits).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CircuitCheckError
from ._heads_common import boot_heads
from ._result import ResultProtocol, jsonable


@dataclass(frozen=True, eq=False)
class LogitLens(ResultProtocol):
    """``values[stage]``: mean logit difference decoded from each stage (``labels``), with
    bootstrap intervals over prompts; ``per_prompt[n, stage]``, ``ranks[n, stage]``."""

    labels: tuple[str, ...]
    values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    per_prompt: np.ndarray = field(repr=False)
    ranks: np.ndarray = field(repr=False)
    metric: str = "logit_diff"
    confidence: float = 0.95

    @property
    def n(self) -> int:
        return int(self.per_prompt.shape[0])

    @property
    def top1(self) -> np.ndarray:
        """Per stage, the fraction of prompts whose answer is the top decoded token."""
        return (self.ranks == 0).mean(0)

    @property
    def median_rank(self) -> np.ndarray:
        return np.median(self.ranks, 0)

    def stage(self, layer: int) -> int:
        """The stage index of the residual after ``layer`` (-1: the embedding)."""
        L = len(self.labels) - 1
        if not -1 <= layer < L:
            raise CircuitCheckError(f"layer must be in -1..{L - 1} (-1: the embedding), got "
                                    f"{layer}")
        return layer + 1

    def table(self):
        import pandas as pd

        return pd.DataFrame({"stage": list(self.labels), self.metric: self.values,
                             "ci_low": self.ci_low, "ci_high": self.ci_high,
                             "top1": self.top1, "median_rank": self.median_rank})

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"labels": list(self.labels), "values": self.values,
                         "ci_low": self.ci_low, "ci_high": self.ci_high, "top1": self.top1,
                         "median_rank": self.median_rank, "metric": self.metric, "n": self.n})

    def summary(self) -> str:
        first = next((self.labels[i] for i in range(len(self.labels)) if self.top1[i] >= 0.5),
                     None)
        return (f"logit lens on {self.n} prompts: {self.metric} "
                + " ".join(f"{v:.2f}" for v in self.values)
                + (f"; the answer is top-1 for most prompts from {first}" if first else
                   "; the answer is never top-1 for most prompts"))


def logit_lens(model: Any, task: Any, *, confidence: float = 0.95, seed: int = 0,
               batch_size: int | None = None) -> LogitLens:
    """Decode the last-token residual after every layer (module docstring)."""
    import torch

    from .. import _validate
    from .._devicemap import weights_loaded
    from ..interventions.patching import cache_activations
    from .dla import _at_end, _b_U

    confidence = _validate.open_unit(confidence, "confidence")
    enc = task.encode(model)
    L = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + ["ln_final.hook_in"]
    acts = cache_activations(model, enc.tokens, names, batch_size=batch_size)
    N = enc.n
    dev = acts[names[0]].device
    resid = torch.stack([_at_end(acts[n], enc.lengths, dev) for n in names], 1)
    with torch.inference_mode(), weights_loaded(model):
        normed = model.ln_final(resid).to(dev)  # [N, S, d]: each stage by its own scale
        logits = normed.double() @ model.W_U.detach().double().to(dev) + _b_U(model).to(dev)
    a = enc.answers.to(dev)
    ans = logits[torch.arange(N, device=dev), :, a]  # [N, S]
    if enc.wrong is not None:
        metric = "logit_diff"
        per = ans - logits[torch.arange(N, device=dev), :, enc.wrong.to(dev)]
    else:
        metric = "answer logit - mean logit"
        per = ans - logits.mean(-1)
    ranks = (logits > ans[..., None]).sum(-1)
    per_np = per.cpu().numpy()
    mean, lo, hi = boot_heads(per_np, confidence, seed)
    labels = ("embed",) + tuple(f"after {l}" for l in range(L - 1)) + ("final",)
    return LogitLens(labels, mean, lo, hi, per_np, ranks.cpu().numpy(), metric, confidence)


__all__ = ["LogitLens", "logit_lens"]
