"""Mixed precision: float32 weights, forward passes under ``torch.autocast``, where it is
exact enough.

``load_model(..., autocast="bfloat16")`` (or ``"float16"``; ``--cc-autocast``, YAML
``autocast:``) keeps the weights in float32 and runs every forward of the model under
``torch.autocast`` for each device type it sits on, so matmuls run in half precision (on a
GPU, its tensor cores) while the residual stream, norms and the engine's metrics and
statistics stay in float32. Whether that is exact enough is checked, not assumed: at load
:func:`install` runs a probe batch (pseudo-random and repeated-half token rows) in float32
and under autocast, on the fast paths and on the bridge's own code paths, and measures the
relative error of the logits (each position's logits centred, as softmax sees them:
``‖Δ‖ / ‖float32‖`` over the batch). If it exceeds the tolerance (default
:func:`default_tolerance`: eight units in the last place of the autocast dtype, bf16 0.0625,
fp16 0.0078, the bound the half-precision claim checks hold values to), or anything overflows,
autocast steps aside: the model runs in float32, ``model.cc_autocast`` is None and
``model.cc_autocast_note`` (also warned) says why. The note also gives the largest change of
a log-probability among float32's top ten tokens and the top-1 agreement.

Measured on the CPU (probe batch, relative logit error, the worse path): bf16 autocast 0.019
(``zoo:planted``), 0.019 (``zoo:induction-2l``), 0.006 (``zoo:ioi-toy``), no worse than bf16
weights' own (0.025, 0.019, 0.006); fp16 autocast 0.002, 0.002, 0.0007. Single
log-probabilities move more (up to 0.5-0.9 nats under bf16 on these small, sharp models, as
with bf16 weights), which is why the gate is the logits' overall error: claims average over
prompts.

Every forward honours it because the one entry point every call goes through,
``bridge.forward`` (``model(...)``, ``run_with_hooks``, ``run_with_cache``, the engine's
batched passes, a user's own calls), is wrapped in :func:`autocast`; half-precision outputs
(logits, a ``stop_at_layer`` residual, ``run_with_cache``'s activations) are upcast to
float32 on the way out, so whatever reads them computes in float32. Hooks inside a pass see
the pass's own dtypes, as with half-precision weights. The parsing here imports no torch, so
the pytest plugin can refuse a bad value before any model loads.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: The dtypes autocast may run matmuls in (aliases: bf16, fp16).
DTYPES = ("bfloat16", "float16")
_ALIASES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
            "fp16": "float16", "half": "float16"}
_EPS = {"bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}  # torch.finfo(dtype).eps
_TOP = 10  # the note: float32's top tokens compared at each position


class AutocastWarning(UserWarning):
    """Autocast was asked for but stepped aside: the model runs in float32."""


def parse_autocast(value: Any) -> str | None:
    """``value`` as ``"bfloat16"``, ``"float16"`` or None (float32 throughout).

    Takes those names, their aliases (bf16, fp16), a torch dtype, or None / ``"none"`` /
    ``"off"`` / ``False``. Raises ``ValueError`` naming the problem and the fix.
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower()
                                           in ("", "none", "off", "false", "no")):
        return None
    text = str(value).strip().lower().removeprefix("torch.")
    if isinstance(value, bool) or text not in _ALIASES:
        raise ValueError(f"autocast {value!r} is not a mixed-precision dtype; use 'bfloat16' "
                         "or 'float16' (matmuls in half precision over float32 weights), or "
                         "None for float32 throughout")
    return _ALIASES[text]


def parse_tolerance(value: Any) -> float | None:
    """The probe's tolerance: a finite number > 0 (the largest relative logit error), or None
    for :func:`default_tolerance`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (math.isfinite(value) and value > 0):
        raise ValueError(f"autocast_tolerance must be a finite number > 0 (the largest "
                         f"relative logit error the probe may show), not {value!r}")
    return float(value)


def default_tolerance(dtype: str) -> float:
    """Eight units in the last place of ``dtype`` (bfloat16 0.0625, float16 0.0078): what
    ``models.rounding_tolerance`` allows a value computed in that dtype."""
    return 8 * _EPS[dtype]


@dataclass(frozen=True)
class AutocastProbe:
    """What the load-time probe measured, float32 against autocast."""

    dtype: str  # what was asked for
    error: float  # relative error of the centred logits, the worse of the two code paths
    tolerance: float
    logp_drift: float  # max |Δ log p| over float32's top tokens, every position and path
    top1_agreement: float  # share of positions whose top token is the same (the worse path)
    kept: bool  # autocast in use (error finite and within tolerance)

    def note(self) -> str:
        """One line for the model, the report and a warning."""
        measured = (f"probe relative logit error {self.error:.3g} (tolerance "
                    f"{self.tolerance:g}); max |Δ log p| {self.logp_drift:.3g} over float32's "
                    f"top-{_TOP} tokens, top-1 agreement {self.top1_agreement:.0%}")
        if self.kept:
            return f"autocast {self.dtype}: {measured}"
        return (f"autocast {self.dtype} not used, forward passes run in float32: {measured}; "
                "raise autocast_tolerance to accept it, or drop autocast")


def device_types(model: Any) -> tuple[str, ...]:
    """The device types a model's forward computes on: its device's, and with a device map
    every mapped device's (``disk``/``cpu`` offload runs on the CPU here)."""
    kinds = {str(getattr(model.cfg, "device", "cpu")).split(":")[0]}
    for where in (model.__dict__.get("cc_device_map") or {}).values():
        text = str(where).lower()
        kinds.add("cuda" if text.isdigit() or text.startswith("cuda") else
                  "cpu" if text in ("cpu", "disk", "meta") else text.split(":")[0])
    return tuple(sorted(k for k in kinds if k in ("cpu", "cuda", "mps", "xpu")))


@contextlib.contextmanager
def autocast(model: Any) -> Iterator[None]:
    """The context every forward of ``model`` runs in: ``torch.autocast`` on each of its
    device types when ``model.cc_autocast`` is set, nothing otherwise."""
    dtype = model.__dict__.get("cc_autocast")
    if dtype is None:
        yield
        return
    import torch

    with contextlib.ExitStack() as stack:
        for kind in device_types(model):
            stack.enter_context(torch.autocast(kind, dtype=getattr(torch, dtype)))
        yield


def _upcast(x: Any) -> Any:
    """Half-precision tensors (and tuples/lists of them) as float32; anything else as is."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if isinstance(x, (tuple, list)):
        return type(x)(_upcast(v) for v in x)
    return x


def _wrap(bridge: Any) -> None:
    """Route ``bridge.forward`` (and so every call) through :func:`autocast`; upcast what
    comes out, including ``run_with_cache``'s activations."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    forward, run_with_cache = type(bridge).forward, type(bridge).run_with_cache

    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with autocast(bridge):
            try:
                out = forward(bridge, *args, **kwargs)
            except StopAtLayerException as stop:  # run_with_hooks reads its residual
                stop.layer_output = _upcast(stop.layer_output)
                raise
        return _upcast(out)

    def autocast_run_with_cache(*args: Any, **kwargs: Any) -> Any:
        out, cache = run_with_cache(bridge, *args, **kwargs)
        store = cache if isinstance(cache, dict) else getattr(cache, "cache_dict", None)
        if isinstance(store, dict):
            for name in list(store):
                store[name] = _upcast(store[name])
        return _upcast(out), cache

    # the instance dict directly: the bridge forwards attribute sets to the HF module
    vars(bridge)["forward"] = autocast_forward
    vars(bridge)["run_with_cache"] = autocast_run_with_cache


def _probe_tokens(model: Any) -> Any:
    """[4, 16] token rows: two pseudo-random, two a random half repeated (so induction-like
    attention is exercised), on the model's device."""
    import torch

    V = int(model.cfg.d_vocab)
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(0, V, (2, 16), generator=g)
    half = torch.randint(0, V, (2, 8), generator=g)
    return torch.cat([rand, half.repeat(1, 2)]).to(model.cfg.device)


def _logits(model: Any, tokens: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(tokens).float().cpu()


def _centred(logits: Any) -> Any:
    """Each position's logits less their mean (what softmax sees)."""
    return logits - logits.mean(-1, keepdim=True)


def measure(model: Any, dtype: str, tolerance: float) -> AutocastProbe:
    """Probe ``model`` (not yet wrapped) in float32 and under ``dtype`` autocast, on the fast
    paths and on the bridge's own code paths (``fastpath.disabled``)."""
    from . import fastpath

    tokens = _probe_tokens(model)
    ref = _logits(model, tokens)
    lp_ref = ref.log_softmax(-1)
    top = lp_ref.topk(min(_TOP, ref.shape[-1]), dim=-1).indices
    vars(model)["cc_autocast"] = dtype
    error, drift, agree = 0.0, 0.0, 1.0
    try:
        for paths in (contextlib.nullcontext(), fastpath.disabled(model)):
            with paths, autocast(model):
                got = _logits(model, tokens)
            e = float((_centred(got) - _centred(ref)).norm() / _centred(ref).norm())
            error = e if not math.isfinite(e) else max(error, e)  # nan/inf: an overflow
            if not math.isfinite(error):
                break
            d = (got.log_softmax(-1).gather(-1, top) - lp_ref.gather(-1, top)).abs()
            drift = max(drift, float(d.max()))
            agree = min(agree, float((got.argmax(-1) == top[..., 0]).float().mean()))
    finally:
        vars(model)["cc_autocast"] = None
    return AutocastProbe(dtype, error, tolerance, drift, agree,
                         kept=math.isfinite(error) and error <= tolerance)


def install(model: Any, dtype: str, tolerance: float | None = None) -> AutocastProbe:
    """Probe, then run ``model`` under ``dtype`` autocast if the probe is within
    ``tolerance``; else keep float32 and warn (an :class:`AutocastWarning`). Sets
    ``model.cc_autocast`` (the dtype in use, or None) and ``model.cc_autocast_note``."""
    tolerance = default_tolerance(dtype) if tolerance is None else tolerance
    try:
        probe = measure(model, dtype, tolerance)
    except RuntimeError as exc:  # e.g. a GPU without bfloat16
        raise ValueError(f"autocast={dtype!r} cannot run on {', '.join(device_types(model))}: "
                         f"{str(exc).splitlines()[0]}; use autocast='float16' (or none)"
                         ) from None
    model.cc_autocast_note = probe.note()
    if probe.kept:
        vars(model)["cc_autocast"] = dtype
        _wrap(model)
    else:
        vars(model)["cc_autocast"] = None
        warnings.warn(probe.note(), AutocastWarning, stacklevel=3)
    return probe
