"""Attribution patching: the gradient-times-difference screen of ``patch_heads``'s grid, and its
correlation with exact patching."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CircuitCheckError
from ..interventions.ablation import as_readout, last_token_hook, readout
from ..interventions.patching import (HEAD_COMPONENTS, RESIDUAL_COMPONENTS, cache_run,
                                      check_component, check_direction, hook_name)
from ..progress import progress_bar
from ..tasks import EncodedTask, Task
from ._patching_base import PatchGrid, _cells, _grid, _layout, _setup, _Setup

if TYPE_CHECKING:  # pragma: no cover
    import torch


#: Metrics with a gradient, for attribution patching.
DIFFERENTIABLE = ("logit_diff", "logit", "logprob", "prob", "prob_diff")


def _torch_metric(name: str, logits: "torch.Tensor", enc: EncodedTask,
                  prompts: "torch.Tensor") -> "torch.Tensor":
    """A differentiable per-row metric from last-token logits [B, vocab]."""
    import torch

    sel = torch.arange(len(prompts), device=logits.device)
    ans = enc.answers[prompts].to(logits.device)
    if name == "logit_diff":
        return logits[sel, ans] - logits[sel, enc.wrong[prompts].to(logits.device)]
    if name == "logit":
        return logits[sel, ans]
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
                            per_position: bool = False, positions: Sequence[str] | None = None,
                            direction: str = "denoise", metric: str = "logit_diff",
                            batch_size: int | None = None, heads: Any = None,
                            layers: Any = None) -> PatchGrid:
    """Attribution patching: every head's patching effect from one forward and one backward
    pass (Nanda 2023), the first-order estimate (source - base activation) · ∂metric/∂activation
    at the base run, summed over the head's positions (and dimensions).

    Denoising differentiates the corrupted run and uses clean - corrupted activations; noising
    the reverse. Same layout and normalisation as ``patch_heads`` (``per_position``, named
    ``positions``, ``heads=`` / ``layers=`` subsets: NaN outside them); ``method="attribution"``.
    It is exact for a patch the metric responds to linearly and can be far off otherwise (e.g.
    patches that move attention patterns a lot): check it against ``patch_heads`` on a sample,
    or use ``patch_heads(..., screen="attribution")``, which does.
    """
    check_component(component, HEAD_COMPONENTS)
    check_direction(direction)
    s = _setup(model, task, metric, what="attribution patching")
    _, shape, dims, _ = _layout(model, s, component, per_position, positions)
    return _attribution(model, s, component, per_position, positions, direction, batch_size,
                        _cells(model, shape, dims, heads, layers))


def attribution_patch_residual(model: Any, task: Task, *, component: str = "resid_pre",
                               per_position: bool = True,
                               positions: Sequence[str] | None = None,
                               direction: str = "denoise", metric: str = "logit_diff",
                               batch_size: int | None = None, layers: Any = None) -> PatchGrid:
    """Attribution patching of ``resid_pre``, ``attn_out`` or ``mlp_out``, in
    ``patch_residual``'s layout (see ``attribution_patch_heads``)."""
    check_component(component, RESIDUAL_COMPONENTS)
    check_direction(direction)
    s = _setup(model, task, metric, what="attribution patching")
    _, shape, dims, _ = _layout(model, s, component, per_position, positions)
    return _attribution(model, s, component, per_position, positions, direction, batch_size,
                        _cells(model, shape, dims, None, layers))


def _attribution(model: Any, s: _Setup, component: str, per_position: bool,
                 positions: Sequence[str] | None, direction: str, batch_size: int | None,
                 cells: np.ndarray | None, progress: Any = None,
                 memo: dict[str, Any] | None = None) -> PatchGrid:
    """The attribution grid of ``cells`` (default all; NaN elsewhere), ``_layout``'s layout.

    ``memo`` (the screen's, shared with its exact rounds): the source run is cached at every
    layer and the base run's residual stream captured in the backward pass's forward, so the
    exact rounds (``activation_patching._sweep``) run neither again."""
    import torch

    name = s.metric.name
    if name not in DIFFERENTIABLE:
        raise CircuitCheckError(
            f"attribution patching needs a differentiable metric; {name!r} is not; use one of "
            f"{list(DIFFERENTIABLE)} or exact patching (cc.patch_heads)")
    enc = s.enc
    L, N, P = model.cfg.n_layers, enc.n, enc.tokens.shape[1]
    pos_of, shape, dims, coords = _layout(model, s, component, per_position, positions)
    is_head = component in HEAD_COMPONENTS
    U = shape[-1] if is_head else 1
    used = (list(range(L)) if cells is None else
            sorted(set(np.nonzero(np.asarray(cells).reshape(L, -1).any(1))[0].tolist())))
    names = [hook_name(component, l) for l in used]
    src_toks, base_toks = ((enc.tokens, enc.corrupted) if direction == "denoise"
                           else (enc.corrupted, enc.tokens))
    if memo is not None:
        memo["src"] = cache_run(model, enc, src_toks, [hook_name(component, l) for l in
                                                         range(L)], batch_size=batch_size)
        src_acts, src_read = memo["src"]
        resid: dict[str, list[torch.Tensor]] = {f"blocks.{l}.hook_resid_pre": []
                                                for l in range(L)}
    else:
        src_acts, src_read = cache_run(model, enc, src_toks, names, batch_size=batch_size)
        resid = {}
    est = np.full((N, L, P, U), np.nan)  # per absolute position first
    parts = []
    bs = batch_size or max(1, _rows(model, P) // 3)  # activations + graph stay alive
    with progress_bar(progress, N, f"attribution {component}", unit="prompt") as bar:
        for start in range(0, N, bs):
            prompts = torch.arange(start, min(start + bs, N))
            base_vals, logits = _forward_backward(model, enc, base_toks, prompts, names, name,
                                                  resid)
            for l, n in zip(used, names):
                a, g = base_vals[n]
                src = _trim(component, src_acts[n][prompts.to(src_acts[n].device)], a.shape)
                cell = _reduce(component, (src - a) * g).cpu().double().numpy()  # [B, Pc, U]
                est[prompts.numpy(), l, :cell.shape[1]] = cell
            parts.append((prompts, readout(model, logits, enc, prompts)))
            if bar is not None:
                bar(len(prompts))
    base_read = as_readout(parts, N)
    if memo is not None:
        memo["base"] = ({n: torch.cat(v) for n, v in resid.items()}, base_read)
    valid = np.arange(P)[None, :] < enc.lengths.numpy()[:, None]  # [N, P]
    if pos_of is None:
        est = np.where(valid[:, None, :, None], np.nan_to_num(est), 0).sum(2)  # [N, L, U]
        est[:, [l for l in range(L) if l not in used]] = np.nan
    else:
        if per_position and positions is None:
            est = np.where(valid[:, None, :, None], est, np.nan)
        else:
            idx = pos_of.numpy()  # [N, K]
            ok = idx < enc.lengths.numpy()[:, None]
            est = est[np.arange(N)[:, None], :, np.minimum(idx, P - 1)]  # [N, K, L, U]
            est = np.where(ok[:, :, None, None], est, np.nan).transpose(0, 2, 1, 3)
    base_metric = s.metric(base_read)
    est = est + base_metric.reshape((N,) + (1,) * (est.ndim - 1))
    if not is_head:
        est = est[..., 0]
    if cells is not None:
        est = np.where(np.asarray(cells)[None], est, np.nan)
    pp = np.moveaxis(est, 0, -1)  # [L, (K,) (U,) N]
    clean, corr = (src_read, base_read) if direction == "denoise" else (base_read, src_read)
    return _grid(pp, dims, coords, s, clean, corr, component, direction, "attribution",
                 exact=np.zeros(shape, dtype=bool))


def _rows(model: Any, P: int) -> int:
    from ..interventions._batching import rows_per_batch

    return rows_per_batch(model, P)


def _forward_backward(model: Any, enc: EncodedTask, tokens: "torch.Tensor",
                      prompts: "torch.Tensor", names: Sequence[str], metric: str,
                      keep: dict[str, list["torch.Tensor"]] | None = None
                      ) -> tuple[dict[str, tuple["torch.Tensor", "torch.Tensor"]],
                                 "torch.Tensor"]:
    """Activations ``names`` and the gradient of the summed per-prompt metric w.r.t. them;
    the activations ``keep`` names are appended to its lists too (detached, padded to the
    tokens' full width, as ``cache_run`` stores them)."""
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

    def store(name: str) -> Any:
        def hook(x: torch.Tensor, hook: Any) -> None:
            pad = tokens.shape[1] - x.shape[1]
            keep[name].append(torch.nn.functional.pad(x.detach(), (0, 0, 0, pad)))
        return hook

    with torch.enable_grad():
        logits = model.run_with_hooks(
            tokens[prompts, :P].to(device),
            fwd_hooks=[("blocks.0.hook_resid_pre", root)] + [(n, save(n)) for n in names]
            + [(n, store(n)) for n in keep or {}] + [last_token_hook(last)])[:, 0]
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


def _reduce(component: str, prod: "torch.Tensor") -> "torch.Tensor":
    """Sum an attribution product to [B, P, U] per position: over d_head (or d_model, U = 1),
    or over keys for patterns."""
    if component == "pattern":  # [B, H, Pq, Pk]
        return prod.sum(-1).transpose(1, 2)
    if component in HEAD_COMPONENTS:  # [B, P, U, D]
        return prod.sum(-1)
    return prod.sum(-1)[..., None]  # [B, P, d_model]


def correlation(a: PatchGrid, b: PatchGrid) -> float:
    """Pearson correlation of two grids' finite cells (e.g. attribution vs exact)."""
    x, y = a.values.ravel(), b.values.ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])
