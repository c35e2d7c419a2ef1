"""Guards against silent failures of the intervention machinery itself.

A hook the bridge accepts but never runs (TransformerLens issue #1688) leaves the run exactly
the unablated model's, and the claim would be measured on the wrong model without a word; so
would a replacement that equals the activation it replaces. A ``HookGuard`` wraps every hook a
run registers and records, for each:

- that it fired (a Python counter: free);
- for an *intervention* hook, whether its output differs from its input anywhere: exactly
  (``torch.equal`` on a CPU, which stops at the first difference; elsewhere one
  ``ne(...).any()`` kept as a tensor on the device and read once at the end, never a
  per-call sync). A replacement equal to the activation only up to float noise is not
  caught here but by the measures' own check (the all-ablated baseline equals the full
  model's), which compares metrics with a tolerance.

``check()`` then raises ``NotMeasurableError`` naming a hook that was expected to fire and did
not, or, when every intervention hook fired and not one changed an activation, saying the
intervention changes nothing (the result is the unablated run's by construction). A single
hook that changes nothing is not a failure (a dead head zero-ablated, a patch at a position
where clean and corrupted agree); a whole run that changes nothing is. Measures turn the error
into their result's ``problem`` (the claim is then NOT MEASURABLE with that reason).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import NotMeasurableError

if TYPE_CHECKING:  # pragma: no cover
    import torch

Hook = tuple[str, Callable[..., Any]]

#: Why a run's guard reads as it does; the wording each failure starts with.
NEVER_FIRED = "was registered but never fired"
CHANGES_NOTHING = "changes nothing"


@dataclass(frozen=True, eq=False)
class _Record:
    """One wrapped hook: its name, whether it must fire, whether it intervenes, what it did."""

    name: str
    expected: bool
    intervenes: bool
    calls: list[int] = field(default_factory=lambda: [0])
    changed: list["torch.Tensor | bool"] = field(default_factory=list)  # one per call


@dataclass(frozen=True, eq=False)
class HookGuard:
    """Records what the hooks of one run (all its batches) did; ``what`` names the intervention
    in messages ("ablation", "patch", "attention ablation", "cache")."""

    what: str
    records: list[_Record] = field(default_factory=list)

    def wrap(self, name: str, fn: Callable[..., Any], *, intervenes: bool = True,
             expected: bool = True) -> Hook:
        """``(name, fn)`` with ``fn`` recording its calls (and, if it ``intervenes``, changes).
        ``expected=False``: a hook the bridge may legitimately skip (outside a start/stop
        layer range); it is checked for nothing."""
        rec = _Record(name, expected, intervenes)
        self.records.append(rec)

        def guarded(x: Any, hook: Any) -> Any:
            rec.calls[0] += 1
            out = fn(x, hook)
            if intervenes and out is not None:
                rec.changed.append(_differs(out, x))
            return out
        return (name, guarded)

    def wrap_all(self, hooks: Iterable[Hook], *, intervenes: bool = True,
                 expected: Callable[[str], bool] | None = None) -> list[Hook]:
        """Every ``(name, fn)`` of ``hooks`` wrapped; ``expected(name)`` as in ``wrap``."""
        return [self.wrap(n, f, intervenes=intervenes,
                          expected=True if expected is None else expected(n))
                for n, f in hooks]

    def problem(self) -> str | None:
        """Why the run cannot be trusted, or None; reads the change flags once."""
        silent = [r.name for r in self.records if r.expected and r.calls[0] == 0]
        if silent:
            names = ", ".join(dict.fromkeys(silent))
            return (f"hook {names} {NEVER_FIRED} (a TransformerLens #1688-style silent hook "
                    f"failure): the {self.what} was not applied there, so the result would be "
                    "the unintervened model's; check the TransformerLens version and that the "
                    "model's hook points run in compatibility mode")
        acting = [r for r in self.records if r.intervenes and r.changed]
        if not acting or _any_changed(acting):
            return None
        names = sorted(dict.fromkeys(r.name for r in acting))
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return (f"the {self.what} {CHANGES_NOTHING}: every {self.what} hook fired ({shown}) but "
                "returned each activation unchanged, so the result is the unintervened "
                "model's by construction; e.g. the replacement values equal the activations (a "
                "mean by template over one prompt per template replaces each activation by "
                "itself, a corrupted prompt equal to its clean one) - use other reference "
                "prompts or another ablation")

    def check(self) -> None:
        """Raise ``NotMeasurableError`` with ``problem()`` if there is one."""
        problem = self.problem()
        if problem is not None:
            raise NotMeasurableError(problem)


def _differs(out: "torch.Tensor", x: "torch.Tensor") -> "torch.Tensor | bool":
    """Whether ``out`` differs from ``x`` anywhere: a bool on a CPU (no sync to avoid), else
    a 0-d bool tensor on the device."""
    import torch

    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        return True
    if out.device.type == "cpu":
        return not torch.equal(out, x)
    return torch.ne(out, x).any()


def _any_changed(records: list[_Record]) -> bool:
    """Whether any call of any of ``records`` changed its activation (at most one sync)."""
    import torch

    flags = [f for r in records for f in r.changed]
    if any(f is True for f in flags):
        return True
    lazy = [f for f in flags if isinstance(f, torch.Tensor)]
    if not lazy:
        return False
    return bool(torch.stack([f.to(lazy[0].device) for f in lazy]).any())


def layer_of(name: str) -> int | None:
    """The block index of a hook name (``blocks.3.attn.hook_z`` -> 3), None outside blocks."""
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def in_layers(start: int | None, stop: int | None) -> Callable[[str], bool]:
    """``expected`` for a run from ``start_at_layer`` to ``stop_at_layer``: the bridge drops
    hooks on blocks outside that range without a word (by design), so only those inside must
    fire."""
    def expected(name: str) -> bool:
        layer = layer_of(name)
        if layer is None:
            return True
        return (start is None or layer >= start) and (stop is None or layer < stop)
    return expected
