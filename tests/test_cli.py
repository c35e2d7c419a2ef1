"""The circuitcheck command."""
from __future__ import annotations


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


def test_discover_writes_a_claim_that_passes(pytester, monkeypatch):
    out = pytester.path / "circuits" / "found.yaml"
    assert main(["discover", "--model", "zoo:planted", "--task", "induction", "--arg", "n=48",
                 "--arg", "seq_len=12", "--top", "2", "--trials", "1024",
                 "--out", str(out)]) == 0
    import yaml

    doc = yaml.safe_load(out.read_text())
    assert sorted(doc["circuit"]["groups"]["discovered"]) == ["0.2", "1.1"]
    expect = doc["claims"][0]["expect"]
    assert expect["faithfulness"]["at_least"] >= 0.9 and expect["necessity"]["at_most"] <= 0.1
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", str(out))
    result.assert_outcomes(passed=1)


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
