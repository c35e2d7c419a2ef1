"""Direct logit attribution: each head's write into W_U[answer] - W_U[wrong] through the final
norm, and the ``direct_effect`` claim's measurement."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._devicemap import weights_loaded
from ..circuit import parse_head
from ..errors import CircuitCheckError
from ..interventions.patching import cache_run
from ..models import compute_dtype, rounding_tolerance
from ..tasks import Task
from ._measurement import Measurement
from ._result import ResultProtocol, head_table, jsonable, nan_like
from ._patching_base import _heads, _ratio_measurement, _seed
from .metrics import get_metric

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True, eq=False)
class DirectLogitAttribution(ResultProtocol):
    """Each component's direct contribution to logit(answer) - logit(wrong) at the last token.

    A component's write c to the final residual stream contributes
    (c - mean(c) [LayerNorm only]) / scale · (w ⊙ (W_U[:, answer] - W_U[:, wrong])), with
    ``scale`` the final norm's cached ``ln_final.hook_scale`` and ``w`` its weight. ``heads`` is
    the mean over prompts ([layer, head]); ``components`` the other writes per prompt (``embed``,
    ``attn_bias.{l}``, ``mlp.{l}``) and ``bias`` (final-norm bias and unembedding bias).
    ``total`` (their sum) equals ``logit_diff`` up to ``max_error``.
    """

    heads: np.ndarray
    per_prompt: np.ndarray = field(repr=False)  # [L, H, N]
    components: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    logit_diff: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    total: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def max_error(self) -> float:
        return float(np.max(np.abs(self.total - self.logit_diff)))

    def __getitem__(self, head: Any) -> float:
        return float(self.heads[parse_head(head)])

    @property
    def values(self) -> np.ndarray:
        """[layer, head] mean direct effects: ``heads``."""
        return self.heads

    @property
    def ci_low(self) -> np.ndarray:
        """NaN: per-head DLA reports no interval (``direct_effect`` does)."""
        return nan_like(self.heads)

    ci_high = ci_low

    def table(self):
        return head_table(self.heads, self.ci_low, self.ci_high)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"values": self.heads, "max_error": self.max_error,
                         "components": {k: float(np.mean(v)) for k, v in self.components.items()}})

    def summary(self) -> str:
        L, H = self.heads.shape
        best = sorted(((float(self.heads[l, h]), f"{l}.{h}") for l in range(L) for h in range(H)),
                      reverse=True)[:3]
        return ("direct logit attribution; largest "
                + ", ".join(f"{name} {v:+.2f}" for v, name in best)
                + f" (max error {self.max_error:.2g})")

    def of(self, heads: Iterable[Any]) -> np.ndarray:
        """Per prompt, the summed direct effect of ``heads``."""
        idx = [parse_head(h) for h in heads]
        return sum((self.per_prompt[l, h] for l, h in idx), np.zeros(self.per_prompt.shape[-1]))


def direct_logit_attribution(model: Any, task: Task, *, batch_size: int | None = None,
                             check: bool = True) -> DirectLogitAttribution:
    """Direct logit attribution of every head (and the other residual writes) to the logit
    difference, from one cached clean run. With ``check`` (default) the components must sum
    to the model's own logit difference; architectures whose residual writes are not linear in
    this sense (e.g. extra norms after attention) raise instead of returning wrong numbers."""
    import torch

    if not isinstance(task, Task):
        raise CircuitCheckError(f"task must be a cc.Task, got {type(task).__name__}")
    enc = task.encode(model)
    if enc.wrong is None:
        raise CircuitCheckError("direct logit attribution to the logit difference needs wrong "
                                "answers; give the task `wrong_answers=[...]`")
    acts, read = cache_run(model, enc, enc.tokens, dla_hook_names(model), batch_size=batch_size)
    return attribute(model, enc, acts, (read.logit - read.wrong_logit).numpy().astype(float),
                     check=check)


def dla_hook_names(model: Any) -> list[str]:
    """The activations :func:`attribute` reads."""
    L = model.cfg.n_layers
    return ([f"blocks.{l}.attn.hook_z" for l in range(L)]
            + [f"blocks.{l}.hook_attn_out" for l in range(L)]
            + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
            + ["blocks.0.hook_resid_pre", "ln_final.hook_in", "ln_final.hook_scale",
               "ln_final.hook_normalized", "ln_final.hook_out"])


def attribute(model: Any, enc: Any, acts: dict[str, "torch.Tensor"], ld: np.ndarray, *,
              check: bool = True) -> DirectLogitAttribution:
    """Direct logit attribution from cached activations ``acts`` (:func:`dla_hook_names`, [N,
    pos, ...]) of any run (clean, or with interventions), ``ld`` that run's logit difference."""
    import torch

    L = model.cfg.n_layers
    N = enc.n
    dev = acts["ln_final.hook_scale"].device
    at_end = {n: _at_end(a, enc.lengths, dev).double() for n, a in acts.items()}
    with weights_loaded(model):  # offloaded layers' weights in
        w, b = _final_norm_affine(model, at_end,
                                  rounding_tolerance(compute_dtype(model, acts[
                                      "ln_final.hook_out"].dtype)))
        W_U = model.W_U.detach().double().to(dev)
        b_U = _b_U(model).to(dev)
        W_O = model.W_O.detach().double().to(dev)  # [L, H, D, d]
    direction = (W_U[:, enc.answers.to(dev)] - W_U[:, enc.wrong.to(dev)]).T * w  # [N, d]
    centre = str(getattr(model.cfg, "normalization_type", "LN") or "").upper().startswith("LN")
    scale = at_end["ln_final.hook_scale"]  # [N, 1]

    def project(c: torch.Tensor) -> torch.Tensor:  # c [N, ..., d]
        if centre:
            c = c - c.mean(-1, keepdim=True)
        shape = (N,) + (1,) * (c.dim() - 2)
        return (c / scale.view(shape + (1,)) * direction.view(
            (N,) + (1,) * (c.dim() - 2) + (-1,))).sum(-1)

    heads, comps = [], {"embed": project(at_end["blocks.0.hook_resid_pre"])}
    for layer in range(L):
        per_head = torch.einsum("nhd,hdm->nhm", at_end[f"blocks.{layer}.attn.hook_z"], W_O[layer])
        heads.append(project(per_head))  # [N, H]
        bias = at_end[f"blocks.{layer}.hook_attn_out"] - per_head.sum(1)
        comps[f"attn_bias.{layer}"] = project(bias)
        comps[f"mlp.{layer}"] = project(at_end[f"blocks.{layer}.hook_mlp_out"])
    a, k = enc.answers.to(dev), enc.wrong.to(dev)
    comps["bias"] = (W_U[:, a] - W_U[:, k]).T.mul(b).sum(-1) + b_U[a] - b_U[k]
    per_head = torch.stack(heads, 0).permute(0, 2, 1).cpu().numpy()  # [L, H, N]
    components = {kk: v.cpu().numpy() for kk, v in comps.items()}
    total = per_head.sum((0, 1)) + sum(components.values())
    out = DirectLogitAttribution(per_head.mean(-1), per_head, components, ld, total)
    if check:
        rel = rounding_tolerance(compute_dtype(model, acts["ln_final.hook_in"].dtype))
        tol = rel * max(1.0, float(np.abs(ld).max()))
        resid = at_end["ln_final.hook_in"] - at_end["blocks.0.hook_resid_pre"] - sum(
            at_end[f"blocks.{l}.hook_attn_out"] + at_end[f"blocks.{l}.hook_mlp_out"]
            for l in range(L))
        if out.max_error > tol or float(resid.abs().max()) > rel * float(
                at_end["ln_final.hook_in"].abs().max()):
            raise CircuitCheckError(
                f"direct logit attribution does not add up on this model: the components sum "
                f"to the logit difference only within {out.max_error:.3g} (tolerance {tol:.3g}); "
                "its residual stream is not embed + attention + MLP writes through one final "
                "norm. Use activation patching (cc.patch_heads) instead")
    return out


def _final_norm_affine(model: Any, at_end: dict[str, "torch.Tensor"], rel: float
                       ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The final norm's weight and bias, checked against the cached run (out = x̂·w + b)."""
    import torch

    normed, out = at_end["ln_final.hook_normalized"], at_end["ln_final.hook_out"]
    d = normed.shape[-1]
    w = getattr(model.ln_final, "w", None)
    b = getattr(model.ln_final, "b", None)
    w = torch.ones(d, dtype=normed.dtype, device=normed.device) if w is None else \
        w.detach().to(normed.device, normed.dtype)
    b = torch.zeros(d, dtype=normed.dtype, device=normed.device) if b is None else \
        b.detach().to(normed.device, normed.dtype)
    if not torch.allclose(normed * w + b, out, atol=rel * float(out.abs().max()) + 1e-6):
        raise CircuitCheckError(
            "the final norm is not x̂·w + b on this model (ln_final.hook_out differs), so direct "
            "logit attribution through ln_final.hook_scale would be wrong; use activation "
            "patching (cc.patch_heads) instead")
    return w, b


def _at_end(act: "torch.Tensor", lengths: "torch.Tensor", dev: Any) -> "torch.Tensor":
    """Each prompt's last-token row of ``act`` ([N, pos, ...]), read on the device ``act`` is
    on (a device map's layers cache on their own devices) and gathered on ``dev``."""
    import torch

    end = (lengths - 1).to(act.device)
    return act[torch.arange(len(end), device=act.device), end].to(dev)


def _b_U(model: Any) -> "torch.Tensor":
    import torch

    try:
        b = model.b_U
    except Exception:  # noqa: BLE001 - bias-free unembedding
        b = None
    if b is None:
        return torch.zeros(model.cfg.d_vocab, dtype=torch.float64)
    return b.detach().double()


def direct_effect(model: Any, task: Task, heads: Any, *, seed: int | None = None,
                  confidence: float = 0.95, batch_size: int | None = None) -> Measurement:
    """The summed direct logit attribution of ``heads`` as a share of the logit difference:
    mean(Σ_heads DLA) / mean(logit_diff), per prompt Σ_heads DLA_i / mean(logit_diff)."""
    hs = _heads(model, heads)
    dla = direct_logit_attribution(model, task, batch_size=batch_size)
    metric = get_metric("logit_diff", has_wrong=True)
    ld = dla.logit_diff
    mine = dla.of(hs)
    scale = float(np.mean(ld)) or 1.0
    data = (dla.heads / scale).tolist()
    details = {"heads": [list(h) for h in hs],
               "heatmaps": {"direct logit attribution": {
                   "data": data, "label": "direct effect per head, share of the logit difference",
                   "outline": [list(h) for h in hs]}}}
    return _ratio_measurement(
        "direct effect", mine, np.zeros_like(ld), ld, metric, seed=_seed(seed),
        confidence=confidence, model=model, task=task, what="zero",
        baselines={"logit_diff": float(ld.mean()), "heads": float(mine.mean())},
        details=details)
