"""Copying: "Tom eats apples. Tom eats" -> " apples"."""
from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TaskError
from ._task import Task

TRIPLES = (("Tom", "eats", "apples"), ("Mary", "reads", "books"), ("John", "drinks", "coffee"),
           ("Anna", "plays", "chess"), ("Bob", "likes", "dogs"), ("Kate", "paints", "flowers"),
           ("Paul", "drives", "trucks"), ("Lisa", "sings", "songs"))


def copying(model: Any, triples: Sequence[tuple[str, str, str]] = TRIPLES, *,
            only_correct: bool = False, seed: int = 0, path: str | None = None,
            template: str = "{S} {V} {O}. {S} {V}", n: int | None = None) -> Task:
    """One prompt per (subject, verb, object): ``"S V O. S V"`` -> ``" O"``.

    ``n``: keep only the first ``n`` prompts (after ``only_correct``), to bound a claim's cost.
    ``template`` places the three words (``{S}``, ``{V}``, ``{O}``); it must end where the
    object is to be copied, e.g. ``"Every day {S} {V} {O}. Every day {S} {V}"``.

    ``path``: a text file with one ``subject verb object`` line per prompt (``#`` comments),
    read instead of ``triples`` (``circuits/data/copying_triples.txt`` holds seed 000's 60).

    The wrong answer is another triple's object, the corrupted prompt another triple's first
    sentence. With ``only_correct`` the prompts the full model does not complete (top-1) are
    dropped, and ``task.meta["dropped"]`` says how many.
    """
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise TaskError(f"n must be a whole number >= 1, got {n!r}")
    if path is not None:
        triples = read_triples(path)
    if len(triples) < 2:
        raise TaskError("copying needs at least two (subject, verb, object) triples")
    for slot in ("{S}", "{V}", "{O}"):
        if slot not in template:
            raise TaskError(f"copying template {template!r} has no {slot} slot")
    if template.rstrip().endswith("{O}"):
        raise TaskError(f"copying template {template!r} ends with the object; it must end "
                        "where the object is to be predicted (e.g. '... {S} {V}')")
    rng = random.Random(seed)
    prompts, answers, wrong, corrupted = [], [], [], []
    for i, (s, v, o) in enumerate(triples):
        j = rng.choice([k for k in range(len(triples)) if triples[k][2] != o])
        s2, v2, o2 = triples[j]
        prompts.append(template.replace("{S}", s).replace("{V}", v).replace("{O}", o))
        corrupted.append(template.replace("{S}", s).replace("{V}", v).replace("{O}", o2))
        answers.append(" " + o)
        wrong.append(" " + o2)
    task = Task(prompts=prompts, answers=answers, wrong_answers=wrong, corrupted=corrupted,
                name="copying", meta={"builder": "copying", "n": len(prompts)})
    if only_correct:
        task = keep_correct(model, task)
    if n is None or n >= len(task):
        return task
    return task.subset(range(n), n=n)


def read_triples(path: str) -> list[tuple[str, str, str]]:
    """``subject verb object`` per line; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"copying triples file {path!r} cannot be read: {exc}") from None
    out = []
    for no, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 3:
            raise TaskError(f"{path}:{no}: expected 'subject verb object', got {line.strip()!r}")
        out.append((words[0], words[1], words[2]))
    return out


def keep_correct(model: Any, task: Task, *, batch_size: int = 32) -> Task:
    """The task restricted to the prompts whose answer is the full model's top-1 token.

    One plain forward pass of the unmodified model (no interventions: a task builder stays
    below the engine), read at each prompt's last token.
    """
    import torch

    enc = task.encode(model)
    device = getattr(model.cfg, "device", None) or "cpu"
    ok = torch.zeros(enc.n, dtype=torch.bool)
    with torch.inference_mode():
        for start in range(0, enc.n, batch_size):
            rows = torch.arange(start, min(start + batch_size, enc.n))
            seq = int(enc.lengths[rows].max())
            logits = model(enc.tokens[rows, :seq].to(device))
            last = logits[torch.arange(len(rows), device=logits.device),
                          (enc.lengths[rows] - 1).to(logits.device)].float()
            ok[rows] = (last.argmax(-1).cpu() == enc.answers[rows])
    keep = [i for i in range(len(task)) if bool(ok[i])]
    if not keep:
        raise TaskError(f"the model completes none of the {len(task)} prompts of {task.name!r}; "
                        "nothing is left to measure a circuit on")
    return task.subset(keep, dropped=len(task) - len(keep), kept=len(keep))
