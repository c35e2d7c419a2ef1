"""Attribution patching: the gradient-times-difference screen of ``patch_heads``'s grid, and its
correlation with exact patching."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CircuitCheckError
from ..interventions.ablation import as_readout, last_token_hook, readout
from ..interventions.patching import (HEAD_COMPONENTS, cache_run, check_component, check_direction,
                                      hook_name)
from ..tasks import EncodedTask, Task
from ._patching_base import PatchGrid, _grid, _setup
from .metrics import Metric

if TYPE_CHECKING:  # pragma: no cover
    import torch


#: Metrics with a gradient, for attribution patching.
DIFFERENTIABLE = ("logit_diff", "logprob", "prob", "prob_diff")


def _torch_metric(name: str, logits: "torch.Tensor", enc: EncodedTask,
                  prompts: "torch.Tensor") -> "torch.Tensor":
    """A differentiable per-row metric from last-token logits [B, vocab]."""
    import torch

    sel = torch.arange(len(prompts), device=logits.device)
    ans = enc.answers[prompts].to(logits.device)
    if name == "logit_diff":
        return logits[sel, ans] - logits[sel, enc.wrong[prompts].to(logits.device)]
    logprob = logits.log_softmax(-1)
    if name == "logprob":
        return logprob[sel, ans]
    if name == "prob":
        return logprob[sel, ans].exp()
    probs = logprob.exp()
    good = (probs * enc.good[prompts].to(probs.device)).sum(-1)
    if enc.bad is None:
        return good
    return good - (probs * enc.bad[prompts].to(probs.device)).sum(-1)


def attribution_patch_heads(model: Any, task: Task, *, component: str = "z",
                            per_position: bool = False, direction: str = "denoise",
                            metric: str = "logit_diff", batch_size: int | None = None
                            ) -> PatchGrid:
    """Attribution patching: every head's patching effect from one forward and one backward
    pass (Nanda 2023), the first-order estimate (source - base activation) · ∂metric/∂activation
    at the base run, summed over the head's positions (and dimensions).

    Denoising differentiates the corrupted run and uses clean - corrupted activations; noising
    the reverse. Same layout and normalisation as ``patch_heads``; ``method="attribution"``.
    It is exact for a patch the metric responds to linearly and can be far off otherwise (e.g.
    patches that move attention patterns a lot): check it against ``patch_heads`` on a sample.
    """
    import torch

    check_component(component, HEAD_COMPONENTS)
    check_direction(direction)
    name = metric.name if isinstance(metric, Metric) else metric
    if name not in DIFFERENTIABLE:
        raise CircuitCheckError(
            f"attribution patching needs a differentiable metric; {name!r} is not; use one of "
            f"{list(DIFFERENTIABLE)} or exact patching (cc.patch_heads)")
    s = _setup(model, task, metric, what="attribution patching")
    enc = s.enc
    L, N, P = model.cfg.n_layers, enc.n, enc.tokens.shape[1]
    names = [hook_name(component, l) for l in range(L)]
    src_toks, base_toks = ((enc.tokens, enc.corrupted) if direction == "denoise"
                           else (enc.corrupted, enc.tokens))
    src_acts, src_read = cache_run(model, enc, src_toks, names, batch_size=batch_size)
    attr: list[torch.Tensor] = []  # per chunk [B, L, (P,) U]
    parts = []
    bs = batch_size or max(1, _rows(model, P) // 3)  # activations + graph stay alive
    for start in range(0, N, bs):
        prompts = torch.arange(start, min(start + bs, N))
        base_vals, logits = _forward_backward(model, enc, base_toks, prompts, names, name)
        cells = []
        for n in names:
            a, g = base_vals[n]
            src = _trim(component, src_acts[n][prompts.to(src_acts[n].device)], a.shape)
            cells.append(_reduce(component, (src - a) * g, per_position))
        chunk = torch.stack(cells, 1).cpu().float()  # [B, L, (P_chunk,) U]
        if per_position:  # chunks trim padding differently: pad back to the task's length
            chunk = torch.nn.functional.pad(chunk, (0, 0, 0, P - chunk.shape[2]))
        attr.append(chunk)
        parts.append((prompts, readout(model, logits, enc, prompts)))
    base_read = as_readout(parts, N)
    est = torch.cat(attr).numpy().astype(float)  # [N, L, (P,) U]
    base_metric = s.metric(base_read)
    est = est + base_metric.reshape((N,) + (1,) * (est.ndim - 1))
    if per_position:  # positions a prompt does not have are not patches
        valid = (np.arange(P)[None, :] < enc.lengths.numpy()[:, None])
        est = np.where(valid[:, None, :, None], est, np.nan)
    pp = np.moveaxis(est, 0, -1)  # [L, (P,) U, N]
    U = pp.shape[-2]
    dims = ("layer",) + (("pos",) if per_position else ()) + (
        "kv_head" if U != model.cfg.n_heads else "head",)
    coords = {"layer": tuple(range(L)), dims[-1]: tuple(range(U))}
    if per_position:
        coords["pos"] = tuple(range(P))
    clean, corr = (src_read, base_read) if direction == "denoise" else (base_read, src_read)
    return _grid(pp, dims, coords, s, clean, corr, component, direction, "attribution")


def _rows(model: Any, P: int) -> int:
    from ..interventions._batching import rows_per_batch

    return rows_per_batch(model, P)


def _forward_backward(model: Any, enc: EncodedTask, tokens: "torch.Tensor",
                      prompts: "torch.Tensor", names: Sequence[str], metric: str
                      ) -> tuple[dict[str, tuple["torch.Tensor", "torch.Tensor"]],
                                 "torch.Tensor"]:
    """Activations ``names`` and the gradient of the summed per-prompt metric w.r.t. them."""
    import torch

    device = model.cfg.device
    P = int(enc.lengths[prompts].max())
    last = (enc.lengths[prompts] - 1).to(device)
    saved: dict[str, torch.Tensor] = {}

    def root(x: torch.Tensor, hook: Any) -> torch.Tensor:
        # the graph's root: gradients flow even when the weights do not require them
        return x if x.requires_grad else x.detach().requires_grad_(True)

    def save(name: str) -> Any:
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            saved[name] = x
            return x
        return hook

    with torch.enable_grad():
        logits = model.run_with_hooks(
            tokens[prompts, :P].to(device),
            fwd_hooks=[("blocks.0.hook_resid_pre", root)] + [(n, save(n)) for n in names]
            + [last_token_hook(last)])[:, 0]
        value = _torch_metric(metric, logits.float(), enc, prompts)
        grads = torch.autograd.grad(value.sum(), [saved[n] for n in names], allow_unused=True)
    out = {}
    for n, g in zip(names, grads):
        a = saved[n].detach()
        out[n] = (a, torch.zeros_like(a) if g is None else g.detach())
    return out, logits.detach()


def _trim(component: str, src: "torch.Tensor", shape: "torch.Size") -> "torch.Tensor":
    """The source activation cut to a chunk's (trimmed) number of positions."""
    P = shape[2] if component == "pattern" else shape[1]
    return src[:, :, :P, :P] if component == "pattern" else src[:, :P]


def _reduce(component: str, prod: "torch.Tensor", per_position: bool) -> "torch.Tensor":
    """Sum an attribution product to [B, (P,) U]: over d_head, or over keys for patterns."""
    if component == "pattern":  # [B, H, Pq, Pk]
        out = prod.sum(-1)  # [B, H, Pq]
        return out.transpose(1, 2) if per_position else out.sum(-1)
    out = prod.sum(-1)  # [B, P, U]
    return out if per_position else out.sum(1)


def correlation(a: PatchGrid, b: PatchGrid) -> float:
    """Pearson correlation of two grids' finite cells (e.g. attribution vs exact)."""
    x, y = a.values.ravel(), b.values.ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])
