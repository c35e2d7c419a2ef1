"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" ->
a year greater than 32. The metric is ``prob_diff``: p(years > YY) - p(years <= YY)."""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..errors import TaskError
from ._compose import single_tokens
from ._task import Task

NOUNS = ("war", "expedition", "journey", "reign", "voyage", "siege", "project", "campaign")


def greater_than(model: Any, n: int = 100, *, seed: int = 0, century: str = "17",
                 nouns: Sequence[str] = NOUNS) -> Task:
    """``n`` prompts with start years 02..98 whose two-digit year is one token for the model.

    Good tokens are the two-digit years greater than YY, bad tokens those <= YY. The corrupted
    prompt uses year 01 (Hanna et al.), which carries no information about the answer.
    Answers are YY+1 and wrong answers YY (for logit_diff/top1 on the boundary), but the
    task's own metric is ``prob_diff``.
    """
    years = [f"{y:02d}" for y in range(100)]
    single, _ = single_tokens(model, years, lead="")
    if len(single) < 100:
        raise TaskError(f"greater-than needs every two-digit year 00..99 to be one token for the "
                        f"model; {100 - len(single)} are not (e.g. "
                        f"{[y for y in years if y not in single][:5]})")
    probe = f"The war lasted from the year {century}"
    if model.to_tokens(probe + "32")[0].tolist() != (
            model.to_tokens(probe)[0].tolist() + model.to_tokens("32", prepend_bos=False)[0].tolist()):
        raise TaskError(f"the model's tokenizer does not split '{century}32' into "
                        f"'{century}' + '32', so the year's last two digits are not the next token")
    rng = random.Random(seed)
    prompts, corrupted, answers, wrong, good, bad, groups = [], [], [], [], [], [], []
    for _ in range(n):
        yy = rng.randint(2, 98)
        noun = rng.choice(list(nouns))
        prompts.append(f"The {noun} lasted from the year {century}{yy:02d} to the year {century}")
        corrupted.append(f"The {noun} lasted from the year {century}01 to the year {century}")
        answers.append(f"{yy + 1:02d}")
        wrong.append(f"{yy:02d}")
        good.append(years[yy + 1:])
        bad.append(years[: yy + 1])
        groups.append(noun)
    return Task(prompts=prompts, answers=answers, wrong_answers=wrong, corrupted=corrupted,
                good_tokens=good, bad_tokens=bad, groups=groups, name="greater-than",
                meta={"builder": "greater_than", "n": n, "seed": seed})
