"""Device maps: a model split over several devices, through the Bridge's own support.

``load_model(..., device_map=..., max_memory=...)`` hands these to
``TransformerBridge.boot_transformers``, which loads the Hugging Face model with accelerate's
dispatch: each layer's weights live on one device and accelerate's hooks move activations
between them. The checks here import no torch, so the pytest plugin can refuse a bad
``--cc-device-map`` (or YAML ``device_map:``) before any model loads.

Accepted: one of :data:`STRATEGIES` (``"auto"`` fills the GPUs in order, then the CPU), or a
mapping of module names (``"model.layers.0"``, ``""`` for the whole model) to a device: a GPU
index, ``"cuda:N"``, ``"cpu"``, ``"mps"`` or ``"disk"``. ``"meta"`` is refused: it holds no
weights, and the Bridge cannot load a model onto it.

Read-only analyses that read weight matrices rather than run the model (OV circuits, direct
logit attribution) do so inside :func:`weights_loaded`, which brings offloaded weights in for
the duration, and move each layer's tensors to one device before combining them.
"""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = re.compile(r"cpu|disk|mps|cuda(:\d+)?|\d+")
_MEMORY = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B)?", re.IGNORECASE)


def parse_device_map(value: Any) -> "str | dict[str, str | int] | None":
    """``value`` as a device map ``boot_transformers`` accepts, or None for none.

    Takes a strategy name, a mapping, or the JSON text of a mapping (as a command line
    gives it). Raises ``ValueError`` naming the problem and the fix.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in STRATEGIES:
            return text
        if not text.startswith("{"):
            raise ValueError(f"device_map {value!r} is not a device map; use one of "
                             f"{', '.join(STRATEGIES)} or a JSON object mapping module names "
                             "to devices, e.g. '{\"\": \"cpu\"}' or '{\"model.layers.0\": 0}'")
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"device_map {text!r} is not valid JSON ({exc}); write a JSON "
                             "object such as '{\"model.embed_tokens\": 0, \"model.layers\": 1}'"
                             ) from None
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"device_map must be one of {', '.join(STRATEGIES)} or a non-empty "
                         f"mapping of module names to devices, not {value!r}")
    out: dict[str, str | int] = {}
    for module, device in value.items():
        if not isinstance(module, str):
            raise ValueError(f"device_map key {module!r} must be a module name (a string such "
                             "as 'model.layers.0', or '' for the whole model)")
        if isinstance(device, bool) or not isinstance(device, (str, int)) or \
                not _DEVICE.fullmatch(str(device).strip().lower()):
            hint = (" (meta holds no weights: the Bridge cannot load a model onto it)"
                    if str(device).strip().lower() == "meta" else "")
            raise ValueError(f"device_map[{module!r}] = {device!r} is not a device{hint}; use a "
                             "GPU index (0, 1, ...), 'cuda:N', 'cpu', 'mps' or 'disk'")
        text = str(device).strip().lower()
        out[module] = int(text) if text.isdigit() else text
    return out


def parse_max_memory(value: Any) -> "dict[str | int, str | int] | None":
    """``max_memory`` for the dispatcher: device (GPU index or ``"cpu"``) -> bytes or a size
    such as ``"20GiB"``; JSON text accepted. Raises ``ValueError`` naming the problem."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"max_memory {value!r} is not valid JSON; write e.g. "
                             "'{\"0\": \"20GiB\", \"cpu\": \"64GiB\"}'") from None
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"max_memory must map devices to sizes, e.g. {{0: '20GiB', 'cpu': "
                         f"'64GiB'}}, not {value!r}")
    out: dict[str | int, str | int] = {}
    for device, size in value.items():
        text = str(device).strip().lower()
        if not _DEVICE.fullmatch(text) or text == "disk":
            raise ValueError(f"max_memory key {device!r} is not a device; use a GPU index, "
                             "'cuda:N', 'cpu' or 'mps'")
        if isinstance(size, bool) or not (isinstance(size, int) and size > 0 or
                                          isinstance(size, str) and _MEMORY.fullmatch(size)):
            raise ValueError(f"max_memory[{device!r}] = {size!r} is not a size; use bytes "
                             "(an integer) or a string such as '20GiB'")
        key: str | int = int(text) if text.isdigit() else (
            int(text[5:]) if text.startswith("cuda:") else text)
        out[key] = size
    return out


def cache_key(device_map: Any, max_memory: Any) -> str | None:
    """A hashable text of a (parsed) device map and memory budget, for the model cache."""
    if device_map is None and max_memory is None:
        return None
    return json.dumps([device_map, None if max_memory is None else
                       {str(k): v for k, v in max_memory.items()}], sort_keys=True)


def offloaded(hf_device_map: "Mapping[str, Any] | None") -> list[str]:
    """The modules a realised map keeps on the CPU or disk (accelerate offloads those next
    to a GPU, and the Bridge's weight processing cannot run over them)."""
    return sorted(k for k, v in (hf_device_map or {}).items()
                  if str(v).lower() in ("cpu", "disk"))


@contextlib.contextmanager
def weights_loaded(model: Any) -> Iterator[None]:
    """Within: the weights accelerate offloaded (``disk``, or ``cpu`` next to a GPU: held as
    ``meta`` placeholders) of ``model``'s attention, embedding, final norm and unembedding are
    on their execution devices, so ``model.W_V``, ``W_O``, ``W_U`` ... read real values. Only
    those modules come in (every layer's attention, not its MLP) and go back out after. A
    model with nothing offloaded is untouched (accelerate is not imported)."""
    hf_map = getattr(model, "__dict__", {}).get("cc_device_map")
    if not offloaded(hf_map):
        yield
        return
    from accelerate.utils import align_module_device, has_offloaded_params

    parts = [getattr(b, "attn", None) for b in model.blocks] + [
        getattr(model, name, None) for name in ("embed", "unembed", "ln_final")]
    seen: set[int] = set()
    with contextlib.ExitStack() as stack:
        for part in parts:
            inner = getattr(part, "original_component", None)
            for module in (inner.modules() if inner is not None else ()):
                if id(module) not in seen and has_offloaded_params(module):
                    seen.add(id(module))
                    stack.enter_context(align_module_device(module))
        yield
