"""The ``circuitcheck`` command: run claim files, the demo, and the zoo.

    circuitcheck demo                  check the zoo claims in circuits/, write reports/
    circuitcheck run PATH ... [-- pytest args]
    circuitcheck zoo list | build NAME
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_CLAIMS = "circuits"


def _pytest(args: list[str]) -> int:
    import pytest

    return int(pytest.main(args))


def _demo(ns: argparse.Namespace) -> int:
    claims = Path(ns.claims)
    if not claims.is_dir():
        print(f"circuitcheck demo: no claim directory {str(claims)!r} here; run it from the "
              "circuitcheck checkout or pass --claims DIR", file=sys.stderr)
        return 2
    files = sorted(str(p) for p in claims.glob("zoo_*.yaml"))
    if not files:
        print(f"circuitcheck demo: {claims} has no zoo_*.yaml claim files", file=sys.stderr)
        return 2
    return _pytest([*files, f"--cc-report={ns.report}", f"--cc-seed={ns.seed}",
                    f"--cc-device={ns.device}", "-p", "no:cacheprovider", "-q", "-rs"])


def _run(ns: argparse.Namespace) -> int:
    extra = [f"--cc-report={ns.report}"] if ns.report else []
    return _pytest([*ns.paths, *extra, *ns.pytest_args])


def _zoo(ns: argparse.Namespace) -> int:
    from .zoo.build import main as zoo_main

    return int(zoo_main(ns.zoo_args) or 0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="circuitcheck", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="check the zoo claims (circuits/zoo_*.yaml), write a report")
    d.add_argument("--claims", default=DEMO_CLAIMS, help="claim directory (default: circuits)")
    d.add_argument("--report", default="reports", help="report directory (default: reports)")
    d.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda ... (default auto)")
    d.set_defaults(func=_demo)
    r = sub.add_parser("run", help="check claim files or test files with pytest")
    r.add_argument("paths", nargs="+", help="YAML claim files, test files or directories")
    r.add_argument("--report", default=None, help="also write the HTML/JSON report here")
    r.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="after --: options passed to pytest (e.g. -- --cc-model gpt2 -x)")
    r.set_defaults(func=_run)
    z = sub.add_parser("zoo", help="list or build the zoo models (python -m circuitcheck.zoo)")
    z.add_argument("zoo_args", nargs=argparse.REMAINDER, help="list | build NAME [--out DIR]")
    z.set_defaults(func=_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    if ns.command == "run" and ns.pytest_args[:1] == ["--"]:
        ns.pytest_args = ns.pytest_args[1:]
    return ns.func(ns)


if __name__ == "__main__":
    raise SystemExit(main())
