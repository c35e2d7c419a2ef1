"""The circuitcheck command."""
from __future__ import annotations

import subprocess
import sys

from circuitcheck.cli import main


def test_run_passes_options_to_pytest_and_writes_the_report(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("circuitcheck.cli._pytest", lambda args: seen.setdefault("args", args) and 0)
    assert main(["run", "circuits/", "--report", str(tmp_path), "-x", "--cc-seed=3"]) == 0
    assert seen["args"] == ["circuits/", f"--cc-report={tmp_path}", "-x", "--cc-seed=3"]


def test_demo_without_claims_says_where_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    assert "no claim directory 'circuits'" in capsys.readouterr().err


def test_discover_writes_a_claim_that_passes(tmp_path):
    # not pytester: it restores sys.modules afterwards, and torch/datasets imported by the
    # in-process discover cannot be imported a second time by the next test
    out = tmp_path / "circuits" / "found.yaml"
    assert main(["discover", "--model", "zoo:planted", "--task", "induction", "--arg", "n=48",
                 "--arg", "seq_len=12", "--top", "2", "--trials", "1024",
                 "--out", str(out)]) == 0
    import yaml

    doc = yaml.safe_load(out.read_text())
    assert sorted(doc["circuit"]["groups"]["discovered"]) == ["0.2", "1.1"]
    expect = doc["claims"][0]["expect"]
    # 48/48 top-1 successes: the Wilson interval's lower end is 0.926, so the written
    # threshold (bound - 0.05) is 0.88, not more: 48 prompts cannot show more than that
    assert expect["faithfulness"]["at_least"] >= 0.85 and expect["necessity"]["at_most"] <= 0.15
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr


def test_discover_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    out.write_text("model: zoo:planted\nclaims: []\n")
    args = ["discover", "--model", "zoo:planted", "--task", "induction", "--arg", "n=8",
            "--arg", "seq_len=6", "--top", "1", "--trials", "64", "--out", str(out)]
    assert main(args) == 2
    assert "already exists; choose another --out or pass --force" in capsys.readouterr().err
    assert out.read_text() == "model: zoo:planted\nclaims: []\n"
    assert main(args + ["--force"]) == 0
    assert "discovered" in out.read_text()
