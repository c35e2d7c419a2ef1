"""The edge benchmark's baseline is right: its plain one-forward-per-circuit loop
(``benchmarks/_plain_edges.py``) gives circuitcheck's batched edge patching on zoo:planted,
so the benchmark's ratios compare equal work."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import circuitcheck as cc

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_edges
        yield bench_edges
    finally:
        sys.path.remove(str(BENCH))


def test_plain_loop_equals_the_batched_engine_on_planted(bench):
    model = cc.load_model("zoo:planted", device="cpu")
    task = bench.fixed_task(model, n=4, seq_len=8, seed=3)
    scores = bench.ranking(model, seed=1)
    circuits = [scores.top(n) for n in (1, len(scores) // 10, len(scores) // 2)]
    batched = bench.cc_curve(model, task, circuits)
    plain = bench.plain(model, task, circuits)
    assert batched.shape == plain.shape == (3, 4)
    assert (batched - plain).abs().max() < 1e-4
    # the circuits do differ, so the comparison has something to find
    assert (batched[0] - batched[2]).abs().max() > 1e-3
