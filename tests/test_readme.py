"""The README's and the claim-file docstring's examples run and hold (docs stay true)."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_documented_examples_hold(pytester):
    readme = (ROOT / "README.md").read_text()
    pytester.makepyfile(test_readme_example=re.findall(r"```python\n(.*?)```", readme, re.S)[0])
    (pytester.path / "circuits").mkdir()
    yaml_block = re.findall(r"```yaml\n(.*?)```", readme, re.S)[0]
    (pytester.path / "circuits" / "readme.yaml").write_text(yaml_block)
    doc = (ROOT / "circuitcheck" / "claimfile.py").read_text().split('"""')[1]
    block = doc.split("::\n\n", 1)[1].split("\n\nEvery key")[0]
    (pytester.path / "circuits" / "docstring.yaml").write_text(textwrap.dedent(block))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["claims: 17 held"])
