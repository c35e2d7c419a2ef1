"""Which prompts an ablation's replacement values come from (node and edge ablations alike)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import CircuitCheckError, TaskError
from ..tasks import EncodedTask

if TYPE_CHECKING:  # pragma: no cover
    import torch


def reference_for(enc: EncodedTask, reference: str | None) -> str:
    """The reference prompt set's name: ``corrupted`` by default when the task has them."""
    if reference is None:
        reference = "corrupted" if enc.corrupted is not None else "clean"
    if reference not in ("clean", "corrupted"):
        raise CircuitCheckError(f"reference must be 'clean' or 'corrupted', got {reference!r}")
    return reference


def reference_prompts(enc: EncodedTask, kind: Any, reference: str
                      ) -> tuple[str, "torch.Tensor", "torch.Tensor"]:
    """``(reference, tokens, lengths)`` the values of ``kind`` are taken from: the corrupted
    prompts for resample (paired, so of the same lengths) or ``reference="corrupted"``."""
    import torch

    if kind.value == "resample" or reference == "corrupted":
        if enc.corrupted is None:
            raise TaskError(
                f"{kind.value} ablation with reference 'corrupted' needs corrupted prompts; give "
                "the task `corrupted=[...]` or use ablation='mean' with reference='clean'"
            )
        toks, lens = enc.corrupted, enc.corrupted_lengths
    else:
        toks, lens = enc.tokens, enc.lengths
    if kind.value == "resample":
        reference = "corrupted"
        if not torch.equal(lens, enc.lengths):
            i = int((lens != enc.lengths).nonzero()[0])
            raise TaskError(
                f"resample ablation pairs positions, but corrupted prompt {i} has {int(lens[i])} "
                f"tokens and its clean prompt {int(enc.lengths[i])}; make each corrupted prompt "
                "the same length as its clean prompt"
            )
    return reference, toks, lens
