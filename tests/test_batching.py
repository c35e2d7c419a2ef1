"""Rows are split into forward passes by length: every row once, within budget, little padding."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitcheck.interventions._batching import length_batches


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=300), st.integers(1, 100),
       st.booleans())
def test_every_row_once_within_budget(lengths: list[int], max_rows: int, fixed: bool) -> None:
    lens = torch.tensor(lengths)
    batches = length_batches(lens, max_rows, fixed_rows=fixed)
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    budget = max_rows * max(lengths)
    for b in batches:
        P = int(lens[b].max())
        assert len(b) * P <= max(budget, P)  # the memory budget, in token-rows
        if fixed:
            assert len(b) <= max_rows


def test_lengths_apart_get_their_own_forward() -> None:
    # 40 rows of 20 tokens and 40 of 12: padding the short ones to 20 would cost 320
    # token-rows, more than a forward's overhead, so they run apart and nothing is padded
    lens = torch.tensor([20] * 40 + [12] * 40)
    batches = length_batches(lens, 100)
    assert [sorted(set(lens[b].tolist())) for b in batches] == [[20], [12]]
    # a few rows one token shorter ride along instead of paying another forward
    few = torch.tensor([20] * 40 + [19] * 3)
    assert len(length_batches(few, 100)) == 1


def test_shorter_rows_fill_the_same_memory() -> None:
    lens = torch.tensor([20] * 10 + [10] * 40)
    sizes = [(len(b), int(lens[b].max())) for b in length_batches(lens, 10)]
    assert sizes == [(10, 20), (20, 10), (20, 10)]
    assert [len(b) for b in length_batches(lens, 10, fixed_rows=True)] == [10, 10, 10, 10, 10]
