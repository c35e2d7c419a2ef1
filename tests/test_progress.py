"""Progress bars: where they go (terminal, /dev/tty inside pytest, nowhere in logs), and that a
long measurement drives one to its total."""
from __future__ import annotations

import io

import pytest

from circuitcheck import progress


def test_where_bars_go(monkeypatch):
    monkeypatch.delenv("CIRCUITCHECK_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal (a CI log)
    monkeypatch.setattr(progress, "_TTY", [None])  # no controlling terminal
    assert progress.target(None) == (False, None, False)
    tty = io.StringIO()
    monkeypatch.setattr(progress, "_TTY", [tty])  # inside pytest, with a terminal
    assert progress.target(None) == (True, tty, False)
    assert progress.target(False)[0] is False
    monkeypatch.setenv("CIRCUITCHECK_PROGRESS", "0")
    assert progress.target(None)[0] is False
    assert progress.target(True)[0] is True  # an explicit request wins


def test_patching_drives_a_bar_to_its_total(tiny, monkeypatch, capsys):
    import circuitcheck as cc
    from circuitcheck.measures import patching as P

    from .conftest import own_task

    monkeypatch.setattr(progress, "DELAY", 0.0)
    task = own_task(tiny, n=3)
    P.patch_heads(tiny, task, progress=True)
    err = capsys.readouterr().err
    rows = tiny.cfg.n_layers * tiny.cfg.n_heads * 3
    assert "patching z" in err and f"/{rows} " in err
    seen = []  # a callable is used as the bar itself: it sees every row once
    P.patch_heads(tiny, task, progress=seen.append)
    assert sum(seen) == rows
    seen.clear()
    P.path_patch_heads(tiny, task, ["1.1"], receiver_input="q", progress=seen.append)
    assert sum(seen) == 2 * tiny.cfg.n_heads * 3  # senders of layer 0 only, two steps each
    mc = cc.stochastic_ablation(tiny, task, trials=64, exclusion_keep_prob=None,
                                progress=True, seed=0)
    err = capsys.readouterr().err
    assert "stochastic ablation" in err and "/64 " in err and mc.trials_used == 64
    P.patch_heads(tiny, task, progress=False)
    assert capsys.readouterr().err == ""
