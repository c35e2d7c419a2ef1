"""Which YAML files are claim files: the plugin's collection rule and its hint.

Kept apart from ``plugin`` (which every pytest run imports) and free of torch."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def named_on_command_line(file_path: Any, config: Any) -> bool:
    """Whether ``file_path`` is one of the paths given to pytest (``file::test`` too)."""
    here = Path(config.invocation_params.dir)
    return any((here / a.split("::")[0]).resolve() == Path(file_path).resolve()
               for a in config.args)


def stray_claim_files(config: Any, limit: int = 3) -> list[str]:
    """Claim-looking YAML files (a top-level ``claims:``) under the command line's paths but
    outside any ``circuits/`` directory: the reason a run collected nothing."""
    here = Path(config.invocation_params.dir)
    found: list[str] = []
    for a in config.args or ["."]:
        root = here / a.split("::")[0]
        if not root.is_dir():
            continue
        for ext in ("*.yaml", "*.yml"):
            for f in root.rglob(ext):
                inside = f.relative_to(root).parts
                if "circuits" in f.parts[:-1] or any(p.startswith(".") for p in inside):
                    continue
                try:
                    head = f.read_text(encoding="utf-8", errors="replace")[:20000]
                except OSError:
                    continue
                if re.search(r"^claims\s*:", head, re.M):
                    found.append(str(f.relative_to(here)) if f.is_relative_to(here) else str(f))
                if len(found) >= limit:
                    return found
    return found
