"""Run one claim file as a user does (its own pytest subprocess) and require every declared
claim to be recorded and held, intervals on the right side of the threshold and never
zero-width; shared by the zoo and the real-model claim-file tests."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def check_claim_file_holds(pytester, claim_file: Path) -> None:
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
        if low is None:  # a hypothesis test decided by its p-value (localization, minimality)
            assert r.get("p_value") is not None, r
            continue
        assert low < high, r["claim"]
        if r["threshold"] is None:
            continue
        if r["op"] == ">=":
            assert low >= r["threshold"], r
        elif r["op"] == "<=":
            assert high <= r["threshold"], r
