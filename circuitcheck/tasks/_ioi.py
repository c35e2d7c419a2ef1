"""Indirect-object identification prompts (Wang et al. 2022).

"Then, Mary and John went to the store. John gave a drink to" -> " Mary": the indirect object
(IO, Mary) is the answer and the repeated subject (S, John) the wrong answer. Positions:
``IO``, ``S1`` (first subject), ``S1+1`` (the token after it), ``S2`` (second subject), ``end``.
Template groups name the template each prompt came from, for mean ablation by template.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..errors import TaskError
from ._compose import fill, single_tokens
from ._task import Task

#: BABA templates: the subject comes first. ABBA swaps the first two names.
BABA_TEMPLATES = (
    "Then, {S} and {IO} went to the {PLACE}. {S} gave a {OBJECT} to",
    "When {S} and {IO} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "After {S} and {IO} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {S} and {IO} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "Friends {S} and {IO} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
ABBA_TEMPLATES = tuple(t.replace("{S} and {IO}", "{IO} and {S}", 1) for t in BABA_TEMPLATES)

NAMES = ("Mary", "John", "Alice", "Bob", "Sarah", "Tom", "James", "Anna", "David", "Laura",
         "Michael", "Emma", "Paul", "Lisa", "Mark", "Kate", "Peter", "Jane", "Daniel", "Rachel")
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "station", "park")
OBJECTS = ("drink", "ring", "bone", "kiss", "book", "basketball", "computer", "necklace")

CORRUPTIONS = ("abc", "swap-names", "swap-s2", "swap", None)


def ioi(model: Any, n: int = 100, *, seed: int = 0, templates: str | Sequence[str] = "mixed",
        corrupt: str | None = "abc", names: Sequence[str] = NAMES,
        places: Sequence[str] = PLACES, objects: Sequence[str] = OBJECTS,
        drop_templates: Sequence[str] = ()) -> Task:
    """``n`` IOI prompts from BABA, ABBA or mixed templates (or your own template strings).

    ``corrupt="abc"``: the counterfactual replaces the three name occurrences by three other
    names (ABB -> XYZ), as the mean-ablation reference of Wang et al.; ``"swap-names"`` swaps
    every occurrence of the two names (IO <-> S, as the IOI notebook's dataset does: the answer
    becomes the other name); ``"swap-s2"`` (also ``"swap"``, its earlier name) replaces only S2
    by the IO name (which flips the answer too); ``None``: no counterfactual. Only names, places and
    objects that are single tokens for ``model`` are used; too few is an error.
    ``drop_templates``: template group names (``"BABA-3"``, ``"ABBA-1"``, ``"custom-0"``) left
    out, e.g. one the model fails on (see ``cc.task_quality``); the others keep their names and
    ``task.meta["dropped_templates"]`` records what was dropped.
    """
    if n < 1:
        raise TaskError(f"n must be at least 1, got {n}")
    if corrupt not in CORRUPTIONS:
        raise TaskError(f"corrupt must be one of {CORRUPTIONS}, got {corrupt!r}")
    chosen = _templates(templates)
    if isinstance(drop_templates, str):
        drop_templates = [drop_templates]
    known = [g for g, _ in chosen]
    unknown = [d for d in drop_templates if d not in known]
    if unknown:
        raise TaskError(f"drop_templates names {unknown}, which are not among this task's "
                        f"templates {known}")
    chosen = [(g, t) for g, t in chosen if g not in set(drop_templates)]
    if not chosen:
        raise TaskError(f"drop_templates {list(drop_templates)} drops every template")
    ok_names, bad = single_tokens(model, list(names))
    if len(ok_names) < 5:
        raise TaskError(
            f"IOI needs at least 5 names that are single tokens (with a leading space) for this "
            f"model; only {ok_names} are, {bad[:8]} are not. Pass names=[...] that are"
        )
    ok_places, _ = single_tokens(model, list(places))
    ok_objects, _ = single_tokens(model, list(objects))
    if not ok_places or not ok_objects:
        raise TaskError("IOI needs at least one single-token place and object; pass places= / objects=")
    rng = random.Random(seed)
    prompts, answers, wrong, corrupted, groups = [], [], [], [], []
    positions: dict[str, list[int]] = {"IO": [], "S1": [], "S1+1": [], "S2": []}
    for _ in range(n):
        gname, template = rng.choice(chosen)
        io, s, x, y, z = rng.sample(ok_names, 5)
        values = {"IO": io, "S": s, "PLACE": rng.choice(ok_places), "OBJECT": rng.choice(ok_objects)}
        text, where = fill(model, template, values)
        prompts.append(text)
        answers.append(" " + io)
        wrong.append(" " + s)
        groups.append(gname)
        positions["IO"].append(where["IO"][0])
        positions["S1"].append(where["S"][0])
        positions["S1+1"].append(where["S"][0] + 1)
        positions["S2"].append(where["S"][1])
        if corrupt == "abc":
            corrupted.append(_abc(model, template, values, (x, y, z)))
        elif corrupt in ("swap", "swap-s2"):
            corrupted.append(_swap_s2(model, template, values))
        elif corrupt == "swap-names":
            corrupted.append(fill(model, template, {**values, "IO": s, "S": io})[0])
    return Task(prompts=prompts, answers=answers, wrong_answers=wrong,
                corrupted=corrupted or None, positions=positions, groups=groups,
                name=f"ioi-{templates if isinstance(templates, str) else 'custom'}",
                meta={"builder": "ioi", "n": n, "seed": seed, "corrupt": corrupt,
                      "dropped_templates": list(drop_templates)})


def _templates(templates: str | Sequence[str]) -> list[tuple[str, str]]:
    named = {"BABA": [(f"BABA-{i}", t) for i, t in enumerate(BABA_TEMPLATES)],
             "ABBA": [(f"ABBA-{i}", t) for i, t in enumerate(ABBA_TEMPLATES)]}
    named["mixed"] = named["BABA"] + named["ABBA"]
    if isinstance(templates, str):
        if templates not in named:
            raise TaskError(f"templates must be 'BABA', 'ABBA', 'mixed' or a list of template "
                            f"strings, got {templates!r}")
        return named[templates]
    out = []
    for i, t in enumerate(templates):
        for slot in ("{IO}", "{S}"):
            if slot not in t:
                raise TaskError(f"template {i} {t!r} has no {slot} slot")
        if t.count("{S}") != 2:
            raise TaskError(f"template {i} {t!r} must name the subject {{S}} twice")
        out.append((f"custom-{i}", t))
    return out


def _abc(model: Any, template: str, values: dict[str, str], xyz: tuple[str, str, str]) -> str:
    """ABB -> XYZ: every name occurrence replaced, the three of them distinct."""
    first = template.replace("{S}", "{X}", 1).replace("{IO}", "{Y}", 1).replace("{S}", "{Z}", 1)
    text, _ = fill(model, first, {**values, "X": xyz[0], "Y": xyz[1], "Z": xyz[2]})
    return text


def _swap_s2(model: Any, template: str, values: dict[str, str]) -> str:
    """S2 becomes the IO name, so the other name is now the indirect object."""
    head, _, tail = template.rpartition("{S}")
    text, _ = fill(model, head + "{IO}" + tail, values)
    return text
