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


def _fake_model(device: str, dtype: torch.dtype = torch.bfloat16, device_map=None):
    """A model as the planner sees it: only ``cfg`` (and a device map for a sharded one)."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(d_model=64, d_mlp=256, n_heads=4, d_vocab=1000, dtype=dtype,
                          device=device)
    return SimpleNamespace(cfg=cfg, cc_device_map=device_map)


def test_gpu_batches_come_from_free_device_memory(monkeypatch) -> None:
    from circuitcheck.interventions import _batching as b

    free = {0: 4 * 10**9, 1: 100 * 10**6}
    asked = []

    def mem_get_info(device):
        asked.append(device.index)
        return free[device.index or 0], 80 * 10**9
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    # by hand, bf16 (2 bytes), 10 tokens: 10*(8*64 + 2*256 + 3*4*10)*2 + 1000*(2+4 float32 logits)
    per_row = 10 * (8 * 64 + 2 * 256 + 3 * 4 * 10) * 2 + 1000 * 6
    assert b.bytes_per_row(_fake_model("cuda:1").cfg, 10) == per_row == 28880
    assert b.rows_per_batch(_fake_model("cuda:1"), 10) == int(100e6 * 0.6) // per_row == 2077
    assert b.rows_per_batch(_fake_model("cuda:0"), 10) == b.MAX_ROWS  # 2.4 GB: capped
    # a sharded model: the fullest of its GPUs decides (disk holds no activations)
    sharded = _fake_model("cuda:0", device_map={"model.embed_tokens": 0, "model.layers.0": 0,
                                                "model.layers.1": 1, "lm_head": "disk"})
    asked.clear()
    assert b.rows_per_batch(sharded, 10) == 2077 and sorted(asked) == [0, 1]
    assert b.rows_per_batch(_fake_model("cuda:0"), 10, extra_per_row=10**6) == \
        int(4e9 * 0.6) // (per_row + 10**6)


def test_cpu_batches_keep_the_cpu_budget(monkeypatch) -> None:
    from circuitcheck.interventions import _batching as b

    def no_gpu(device):
        raise AssertionError("a CPU model must not ask CUDA for memory")
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_gpu)
    model = _fake_model("cpu", torch.float32)
    per_row = 10 * (8 * 64 + 2 * 256 + 3 * 4 * 10) * 4 + 1000 * 8
    assert b.rows_per_batch(model, 10) == b.CPU_BUDGET // per_row == 2496
    assert b.rows_per_batch(_fake_model("cpu", device_map={"": "cpu"}), 10) > 0


def test_merged_starts_runs_small_groups_from_an_earlier_layer():
    """A few rows alone waste a forward pass's fixed cost at every layer: they join an
    earlier group when the layers they add cost less; large groups keep their own start."""
    import torch

    from circuitcheck.interventions._batching import CPU_OVERHEAD_TOKENS, merged_starts

    start = torch.tensor([0] * 4 + [1] * 4 + [2] * 4 + [20] * 288 + [21] * 4 + [29] * 4)
    tokens = torch.full((len(start),), 16.0)
    out = merged_starts(start, tokens, 30)
    pairs = sorted(set(zip(start.tolist(), out.tolist())))
    # 4 rows x 16 tokens = 64 token-rows a layer, one pass's overhead: layers 1-2 join 0,
    # 21 joins 20 (one layer more for 4 rows), 29 stays (9 layers more would cost more)
    assert CPU_OVERHEAD_TOKENS == 64
    assert pairs == [(0, 0), (1, 0), (2, 0), (20, 20), (21, 20), (29, 29)]
    assert (out <= start).all() and set(out.tolist()) <= set(start.tolist())
    # two large groups are never merged: the layers added cost more than a pass saves
    big = torch.tensor([3] * 300 + [5] * 300)
    assert torch.equal(merged_starts(big, torch.full((600,), 16.0), 30), big)
    one = torch.tensor([7, 7, 7])
    assert torch.equal(merged_starts(one, torch.ones(3), 30), one)
