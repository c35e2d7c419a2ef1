"""A zoo of tiny transformer models with known circuits, for testing circuit claims.

Each model is a Hugging Face ``GPT2LMHeadModel`` directory (safetensors weights,
config, word-level tokenizer) plus ``card.json`` / ``README.md`` describing the
circuit it holds (head coordinates) and the numbers that verified it. Load one
with ``TransformerBridge.boot_transformers(str(model_path(name)))``.

Models are shipped under ``circuitcheck/zoo/models/<name>/`` and can be rebuilt
with ``python -m circuitcheck.zoo build NAME`` (see :mod:`circuitcheck.zoo.build`).
Importing this module does not import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ZOO_DIR: Path = Path(__file__).resolve().parent / "models"
"""Directory holding one sub-directory per built model."""

KNOWN_MODELS: tuple[str, ...] = ("planted", "induction-2l", "ioi-toy")
"""Models that ``python -m circuitcheck.zoo build`` knows how to build."""

__all__ = ["ZOO_DIR", "KNOWN_MODELS", "available", "model_path", "card"]


def available() -> list[str]:
    """Names of the models built in :data:`ZOO_DIR` (those with a ``config.json``), sorted."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def model_path(name: str) -> Path:
    """Directory of the built zoo model ``name`` (pass it to ``boot_transformers``).

    Raises ``ValueError`` naming the available models and the build command when missing.
    """
    path = ZOO_DIR / name
    if (path / "config.json").is_file():
        return path
    have = ", ".join(available()) or "none"
    known = ", ".join(KNOWN_MODELS)
    raise ValueError(
        f"zoo model {name!r} is not built (available: {have}; buildable: {known}). "
        f"Build it with: python -m circuitcheck.zoo build {name}"
    )


def card(name: str) -> dict[str, Any]:
    """The model card of ``name`` (``card.json``): circuit head coordinates, scores, accuracies."""
    with open(model_path(name) / "card.json", encoding="utf-8") as f:
        return json.load(f)
