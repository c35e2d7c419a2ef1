"""Activation patching engine: many (patch, prompt) rows per forward pass, doing less work.

A *row* is one patched run of one prompt. Rows are grouped into batches, each row carrying its
own mask in the hooks, and logits are read only at each prompt's last token (a hook on
``unembed.hook_in``), as in ``ablation.run_variants``.

On a CPU a forward pass is compute-bound, so batching alone does not make a sweep cheaper:
the work itself must shrink. A run that first changes something at layer ``l`` is identical to
the unpatched base run up to layer ``l``, so the base run's residual stream is cached once and
every patched run *starts* at its first patched layer. TransformerLens 4's bridge accepts
``start_at_layer`` but still executes blocks ``0..l-1`` (their output is discarded, measured:
every block's attention and MLP run), so :func:`skip_blocks` additionally swaps those blocks for
a pass-through while the run lasts. Whether that is exact for a model is checked once per model
against a normal run (:func:`skipping_is_exact`); where it is not, runs fall back to the
bridge's own ``start_at_layer`` (correct, just not faster).
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitCheckError, TaskError, did_you_mean
from ..tasks import EncodedTask
from ._batching import length_batches, merged_starts, rows_per_batch
from ._guard import HookGuard, in_layers
from .ablation import (Readout, as_readout, last_token_hook, no_logits, read_plan,
                       readout)

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Per-head components: hook name suffix under ``blocks.{l}.attn.``.
HEAD_COMPONENTS = ("z", "q", "k", "v", "pattern")
#: Residual-stream components: hook name suffix under ``blocks.{l}.``.
RESIDUAL_COMPONENTS = ("resid_pre", "attn_out", "mlp_out")
DIRECTIONS = ("denoise", "noise")

HookList = list[tuple[str, Callable[..., Any]]]


# -- checks ------------------------------------------------------------------------------

def check_component(component: str, allowed: Sequence[str]) -> str:
    """Return ``component`` or raise naming the allowed ones."""
    if component not in allowed:
        raise CircuitCheckError(
            f"unknown component {component!r}{did_you_mean(str(component), allowed)}; use one "
            f"of {list(allowed)}")
    return component


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise CircuitCheckError(
            f"unknown direction {direction!r}{did_you_mean(str(direction), DIRECTIONS)}; use "
            "'denoise' (clean activations into the corrupted run) or 'noise' (corrupted "
            "activations into the clean run)")
    return direction


def check_paired(enc: EncodedTask, what: str = "activation patching") -> None:
    """Patching pairs positions: every corrupted prompt must be as long as its clean prompt."""
    import torch

    if enc.corrupted is None:
        raise TaskError(
            f"{what} needs corrupted prompts; give the task `corrupted=[...]`, one "
            "counterfactual prompt per prompt, each with the same number of tokens")
    if not torch.equal(enc.corrupted_lengths, enc.lengths):
        i = int((enc.corrupted_lengths != enc.lengths).nonzero()[0])
        raise TaskError(
            f"{what} pairs token positions, but corrupted prompt {i} has "
            f"{int(enc.corrupted_lengths[i])} tokens and its clean prompt {int(enc.lengths[i])}; "
            "make each corrupted prompt the same length as its clean prompt (same template, "
            "single-token substitutions)")


def n_units(model: Any, component: str) -> int:
    """Heads per layer for ``component``: key/value heads for k and v on GQA models."""
    if component in ("k", "v"):
        kv = getattr(model.cfg, "n_key_value_heads", None)
        return int(kv) if kv else int(model.cfg.n_heads)
    return int(model.cfg.n_heads)


def hook_name(component: str, layer: int) -> str:
    if component in HEAD_COMPONENTS:
        return f"blocks.{layer}.attn.hook_{component}"
    return f"blocks.{layer}.hook_{component}"


# -- caching -----------------------------------------------------------------------------

def saver(into: list) -> Callable[..., None]:
    """A hook appending its (detached) activation to ``into``; bound to one requested name,
    since the bridge reports aliases (``hook_resid_pre``) under their canonical name."""
    def save(x: "torch.Tensor", hook: Any) -> None:
        into.append(x.detach())
    return save


def cache_activations(model: Any, tokens: "torch.Tensor", names: Sequence[str], *,
                      batch_size: int | None = None) -> dict[str, "torch.Tensor"]:
    """The activations ``names`` on ``tokens`` (all rows), batched, kept on the model's device."""
    import torch

    wanted = set(names)
    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    bs = batch_size or rows_per_batch(model, tokens.shape[1])

    guard = HookGuard("caching")
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], bs):
            chunk = tokens[start:start + bs].to(model.cfg.device)
            savers = guard.wrap_all(((n, saver(store[n])) for n in wanted), intervenes=False)
            model.run_with_hooks(chunk, fwd_hooks=[*savers, no_logits()], return_type=None)
    guard.check()
    return {n: torch.cat(v) for n, v in store.items()}


def cache_run(model: Any, enc: EncodedTask, tokens: "torch.Tensor", names: Sequence[str], *,
              batch_size: int | None = None) -> tuple[dict[str, "torch.Tensor"], Readout]:
    """One unpatched pass over ``tokens``: the activations ``names`` and the last-token readout
    ([N]), so a sweep's baselines cost no extra forward pass."""
    import torch

    from ..fastpath import real_tokens

    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    bs = batch_size or rows_per_batch(model, tokens.shape[1])
    parts = []
    lengths = enc.lengths
    # the real tokens of ``tokens``' own rows (the clean or the corrupted prompts), if known
    own = {id(enc.tokens): enc.lengths, id(enc.corrupted): enc.corrupted_lengths}.get(id(tokens))
    guard = HookGuard("caching")
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], bs):
            prompts = torch.arange(start, min(start + bs, tokens.shape[0]))
            last = (lengths[prompts] - 1).to(model.cfg.device)
            with (real_tokens(model, own[prompts], tokens.shape[1]) if own is not None
                  else contextlib.nullcontext()):
                logits = model.run_with_hooks(
                    tokens[prompts].to(model.cfg.device),
                    fwd_hooks=guard.wrap_all([(n, saver(store[n])) for n in store]
                                             + [last_token_hook(last)], intervenes=False))
            parts.append((prompts, readout(model, logits[:, 0], enc, prompts)))
    guard.check()
    return {n: torch.cat(v) for n, v in store.items()}, as_readout(parts, tokens.shape[0])


# -- skipping the blocks a run does not need ----------------------------------------------

_EXACT: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
_SHAPES: "weakref.WeakKeyDictionary[Any, tuple[bool, int]]" = weakref.WeakKeyDictionary()


def _block_output_shape(model: Any) -> tuple[bool, int]:
    """(is_tuple, length) of what a block returns inside the model's layer loop (cached)."""
    import torch

    if model in _SHAPES:
        return _SHAPES[model]
    seen: list[Any] = []
    handle = model.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device))
    finally:
        handle.remove()
    out = seen[0]
    _SHAPES[model] = (True, len(out)) if isinstance(out, tuple) else (False, 1)
    return _SHAPES[model]


@contextlib.contextmanager
def skip_blocks(model: Any, before: int) -> Iterator[None]:
    """While active, blocks ``0..before-1`` return their input untouched (no compute).

    Only meaningful together with ``start_at_layer=before``, which discards their output anyway.
    """
    if before <= 0:
        yield
        return
    is_tuple, length = _block_output_shape(model)

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + (None,) * (length - 1) if is_tuple else hidden

    blocks = [model.blocks[i] for i in range(before)]
    try:
        for block in blocks:
            # the instance dict directly: the bridge forwards attribute *sets* to the wrapped
            # HF module, which would then stay a pass-through after this context
            vars(block)["forward"] = passthrough
        yield
    finally:
        for block in blocks:
            vars(block).pop("forward", None)


def skipping_is_exact(model: Any) -> bool:
    """Whether skipping blocks before ``start_at_layer`` reproduces a normal run (cached)."""
    import torch

    if model in _EXACT:
        return _EXACT[model]
    L = model.cfg.n_layers
    ok = L > 1
    if ok:
        toks = torch.arange(1, 5, device=model.cfg.device)[None] % model.cfg.d_vocab
        try:
            with torch.inference_mode():
                want, cache = model.run_with_cache(
                    toks, names_filter=lambda n: n == f"blocks.{L - 1}.hook_resid_pre")
                resid = cache[f"blocks.{L - 1}.hook_resid_pre"]
                with skip_blocks(model, L - 1):
                    got = model(resid, start_at_layer=L - 1)
            tol = 1e-4 if want.dtype == torch.float32 else 2e-2
            ok = bool(torch.allclose(got.float(), want.float(), atol=tol * float(
                want.abs().max()) + tol, rtol=tol))
        except Exception:  # noqa: BLE001 - any failure means: do not skip on this model
            ok = False
    _EXACT[model] = ok
    return ok


# -- running rows ------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Chunk:
    """One batch of rows: which rows, their prompts, the trimmed length, the start layer."""

    rows: "torch.Tensor"  # [B] indices into the caller's rows
    prompts: "torch.Tensor"  # [B] prompt index of each row
    P: int  # tokens per row (longest prompt of the chunk)
    start: int  # first layer that runs (0: from the tokens)
    device: Any


def run_rows(model: Any, enc: EncodedTask, prompt_of: "torch.Tensor", *,
             tokens: "torch.Tensor", lengths: "torch.Tensor",
             hooks: Callable[[Chunk], HookList],
             start_layer: "torch.Tensor | None" = None,
             start_resid: Callable[[Chunk], "torch.Tensor"] | None = None,
             resid_at_zero: bool = False, stop_at_layer: int | None = None,
             batch_size: int | None = None, reads: "Collection[str] | None" = None,
             progress: Callable[[int], None] | None = None, what: str = "patch",
             merge_starts: bool = False) -> Readout | None:
    """Run R rows (row r = prompt ``prompt_of[r]`` of ``tokens``) and read the last token.

    ``hooks(chunk)`` gives the chunk's hooks (each reads its rows' masks from the chunk).
    ``start_layer[r]`` (default 0) is the first layer where row r differs from the base run;
    rows are batched by it and start there from ``start_resid(chunk)``, the residual entering
    that layer, with the blocks before it skipped; rows starting at 0 run from their tokens
    unless ``resid_at_zero``. Returns a ``Readout`` of shape [R], or None with
    ``stop_at_layer`` (runs that only feed their hooks, e.g. capturing a receiver's input).
    ``reads``: the readout fields wanted (see ``run_variants``). ``progress(n)`` is called
    after each batch of n rows. The hooks are guarded (``_guard.HookGuard``, ``what`` names
    the intervention): one that should fire and does not, or a run whose hooks change no
    activation at all, raises ``NotMeasurableError``. ``merge_starts``: small groups of rows
    run from an earlier group's start layer (``_batching.merged_starts``), for callers whose
    ``start_resid`` is the base residual (not the patch itself) at every start layer.
    """
    import torch

    from ..fastpath import real_tokens

    R = int(prompt_of.shape[0])
    if start_layer is None:
        start_layer = torch.zeros(R, dtype=torch.long)
    elif merge_starts and not resid_at_zero:
        start_layer = merged_starts(start_layer, lengths[prompt_of],
                                    stop_at_layer or model.cfg.n_layers,
                                    device=model.cfg.device)
    if (resid_at_zero or bool((start_layer > 0).any())) and start_resid is None:
        raise CircuitCheckError("rows that start after layer 0 need their residual stream")
    skip = skipping_is_exact(model) if bool((start_layer > 0).any()) else False
    device = model.cfg.device
    bs = batch_size or rows_per_batch(model, tokens.shape[1])
    want, how = read_plan(model, reads)
    parts = []
    guard = HookGuard(what)
    with torch.inference_mode():
        for layer in torch.unique(start_layer).tolist():
            of_layer = (start_layer == layer).nonzero().flatten()
            # rows of similar length together: chunks compute little padding
            for batch in length_batches(lengths[prompt_of[of_layer]], bs, device=device,
                                        fixed_rows=batch_size is not None):
                rows = of_layer[batch]
                prompts = prompt_of[rows]
                P = int(lengths[prompts].max())
                chunk = Chunk(rows, prompts, P, int(layer), device)
                last = (lengths[prompts] - 1).to(device)
                # the bridge drops hooks outside [start, stop) by design: only those must fire
                fwd = guard.wrap_all(hooks(chunk), expected=in_layers(int(layer), stop_at_layer))
                if stop_at_layer is None:
                    fwd.append(guard.wrap(*last_token_hook(last, stop=how != "logits"),
                                          intervenes=False))
                kw = {"fwd_hooks": fwd, "stop_at_layer": stop_at_layer}
                with real_tokens(model, lengths[prompts], P):
                    if layer == 0 and not resid_at_zero:
                        logits = model.run_with_hooks(tokens[prompts, :P].to(device), **kw)
                    else:
                        resid = start_resid(chunk)
                        ctx = skip_blocks(model, layer) if skip else contextlib.nullcontext()
                        with ctx:
                            logits = model.run_with_hooks(resid, start_at_layer=layer, **kw)
                if stop_at_layer is None:
                    parts.append((rows, readout(model, logits[:, 0], enc, prompts, want, how)))
                if progress is not None:
                    progress(len(rows))
    guard.check()
    return as_readout(parts, R) if stop_at_layer is None else None


# -- masks and patch hooks ---------------------------------------------------------------

def patch_hook(component: str, source: "torch.Tensor", head_mask: "torch.Tensor",
               pos_mask: "torch.Tensor", chunk: Chunk) -> Callable[..., "torch.Tensor"]:
    """Replace the activation by ``source`` (per prompt, [N, ...]) where the row's masks say.

    ``head_mask`` [B, H] and ``pos_mask`` [B, P] are the chunk's rows' masks; residual
    components read only whether a row's head mask is set at all (the row is patched at this
    layer). Pattern positions are query positions.
    """
    import torch

    src = source[chunk.prompts.to(source.device), ...]
    P = chunk.P
    if component == "pattern":
        src = src[:, :, :P, :P]
        mask = head_mask[:, :, None, None] & pos_mask[:, None, :P, None]  # [B, H, P, 1]
    elif component in HEAD_COMPONENTS:
        src = src[:, :P]
        mask = pos_mask[:, :P, None, None] & head_mask[:, None, :, None]  # [B, P, H, 1]
    else:  # the rows this layer patches (a chunk may hold rows patched at other layers)
        src = src[:, :P]
        mask = pos_mask[:, :P, None] & head_mask.any(-1)[:, None, None]  # [B, P, 1]
    mask = mask.to(chunk.device)

    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.where(mask.to(x.device), src.to(x.device, x.dtype), x)
    return hook


@dataclass(frozen=True, eq=False)
class Patches:
    """R patched runs: row r patches prompt ``prompt_of[r]`` at ``layers_mask[r]`` (which
    layers), ``head_mask[r, l]`` (which heads of layer l; all-True for residual components) and
    ``pos_mask[r]`` (which token positions)."""

    prompt_of: "torch.Tensor"  # [R] long
    layer_mask: "torch.Tensor"  # [R, L] bool
    head_mask: "torch.Tensor"  # [R, L, H] bool
    pos_mask: "torch.Tensor"  # [R, P] bool

    def __len__(self) -> int:
        return int(self.prompt_of.shape[0])

    @property
    def first_layer(self) -> "torch.Tensor":
        """Each row's first patched layer."""
        import torch

        L = self.layer_mask.shape[1]
        idx = torch.arange(L).expand_as(self.layer_mask)
        return torch.where(self.layer_mask, idx, L).min(1).values


def run_patches(model: Any, enc: EncodedTask, patches: Patches, component: str,
                direction: str, source: dict[int, "torch.Tensor"],
                base_resid: dict[int, "torch.Tensor"], *, batch_size: int | None = None,
                reads: "Collection[str] | None" = None,
                progress: Callable[[int], None] | None = None) -> Readout:
    """Evaluate every patched run of ``patches`` ([R] readout).

    ``source[l]``: the component's activation at layer l on the source prompts (clean for
    denoising), [N, ...]. ``base_resid[l]``: ``resid_pre`` of layer l on the base prompts (the
    corrupted ones for denoising), for every layer some row starts at.
    """
    tokens = enc.corrupted if direction == "denoise" else enc.tokens
    start = patches.first_layer

    def hooks(chunk: Chunk) -> HookList:
        if component == "resid_pre":
            return []  # the patch is the start residual itself
        out = []
        rows = chunk.rows
        for layer in range(chunk.start, patches.layer_mask.shape[1]):
            lm = patches.layer_mask[rows, layer]
            if not bool(lm.any()):
                continue
            hm = patches.head_mask[rows, layer] & lm[:, None]
            out.append((hook_name(component, layer),
                        patch_hook(component, source[layer], hm, patches.pos_mask[rows], chunk)))
        return out

    def start_resid(chunk: Chunk) -> "torch.Tensor":
        import torch

        base = base_resid[chunk.start][chunk.prompts.to(base_resid[chunk.start].device), :chunk.P]
        if component != "resid_pre":
            return base
        pm = patches.pos_mask[chunk.rows, :chunk.P].to(base.device)[..., None]
        src = source[chunk.start][chunk.prompts.to(base.device), :chunk.P]
        return torch.where(pm, src.to(base.dtype), base)

    return run_rows(model, enc, patches.prompt_of, tokens=tokens, lengths=enc.lengths,
                    hooks=hooks, start_layer=start, start_resid=start_resid,
                    resid_at_zero=component == "resid_pre", batch_size=batch_size,
                    reads=reads, progress=progress, merge_starts=component != "resid_pre")
