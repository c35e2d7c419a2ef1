"""The zoo's claim files (circuits/zoo_*.yaml, what `circuitcheck demo` runs) hold as written.

One pytest run per file, as a user runs it; every declared claim must be recorded and held,
with its interval on the right side of its threshold and never zero-width.
"""
from __future__ import annotations

import pytest

from .claim_files import ROOT, check_claim_file_holds

FILES = sorted((ROOT / "circuits").glob("zoo_*.yaml"))


def test_there_are_zoo_claim_files():
    assert len(FILES) >= 4, FILES


@pytest.mark.parametrize("claim_file", FILES, ids=lambda f: f.stem)
def test_zoo_claim_files_hold(pytester, claim_file):
    check_claim_file_holds(pytester, claim_file)
