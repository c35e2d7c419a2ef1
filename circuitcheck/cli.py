"""The ``circuitcheck`` command: run claim files, the demo, and the zoo.

    circuitcheck demo                  check the zoo claims in circuits/, write reports/
    circuitcheck run PATH ... [--report DIR] [pytest options]
    circuitcheck discover --model M --task T [--arg k=v ...] --out circuits/x.yaml
    circuitcheck discover --edges --model M --task T [--top N | --threshold T] --out x.yaml
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


def _discover(ns: argparse.Namespace) -> int:
    import yaml

    from .discover import discover
    from .errors import CircuitCheckError

    spec: dict = {"builder": ns.task}
    for item in ns.arg:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"circuitcheck discover: --arg {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        spec[key] = yaml.safe_load(value)
    try:
        from .claimfile import validate_task_spec

        spec = validate_task_spec(Path(ns.out), spec, "--task")
        if ns.edges:
            from .discover import discover_edges

            doc = discover_edges(ns.model, spec, ns.out, method=ns.method, steps=ns.steps,
                                 top=ns.top, threshold=ns.threshold,
                                 ablation=ns.ablation or "resample",
                                 metric=ns.metric or "logit_diff", margin=ns.margin,
                                 seed=ns.seed, device=ns.device, overwrite=ns.force)
        else:
            if ns.threshold is not None:
                print("circuitcheck discover: --threshold selects edges; add --edges",
                      file=sys.stderr)
                return 2
            doc = discover(ns.model, spec, ns.out, trials=ns.trials, top=ns.top,
                           percentile=ns.percentile, ablation=ns.ablation or "mean",
                           metric=ns.metric or "top1", margin=ns.margin, seed=ns.seed,
                           device=ns.device, overwrite=ns.force)
    except CircuitCheckError as exc:
        print(f"circuitcheck discover: {exc}", file=sys.stderr)
        return 2
    if ns.edges:
        print(f"wrote {ns.out} and {doc['circuit']['file']}: {doc['source']}")
        return 0
    heads = doc["circuit"]["groups"]["discovered"]
    print(f"wrote {ns.out}: {len(heads)} heads {heads}; {doc['source']}")
    return 0


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
    r = sub.add_parser("run", help="check claim files or test files with pytest",
                       description="Other options are passed to pytest, e.g. "
                       "circuitcheck run circuits/ --cc-model gpt2 -x")
    r.add_argument("paths", nargs="+", help="YAML claim files, test files or directories")
    r.add_argument("--report", default=None, help="also write the HTML/JSON report here")
    r.set_defaults(func=_run)
    c = sub.add_parser("discover", help="find the heads (or, --edges, the edges) that matter "
                       "and write a YAML claim")
    c.add_argument("--model", required=True, help="hub id, local directory or zoo:NAME")
    c.add_argument("--task", required=True, help="task builder: ioi, induction, greater_than, "
                   "copying, jsonl, csv")
    c.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="task builder argument (repeatable), e.g. --arg n=64 --arg seq_len=12")
    c.add_argument("--out", required=True, help="claim file to write, e.g. circuits/x.yaml")
    c.add_argument("--force", action="store_true", help="replace --out if it exists")
    c.add_argument("--trials", type=int, default=2048, help="trials per regime (default 2048)")
    c.add_argument("--top", type=int, default=None, help="keep the top K heads by importance "
                   "(with --edges: the top K edges by |score|)")
    c.add_argument("--percentile", type=float, default=90.0,
                   help="without --top: keep heads above this importance percentile (default 90)")
    c.add_argument("--ablation", default=None, help="zero, mean, mean-by-template, resample "
                   "(default mean; with --edges resample, as MIB)")
    c.add_argument("--metric", default=None, help="top1, logit_diff, prob, logprob, ... "
                   "(default top1; with --edges logit_diff: scores need a gradient)")
    c.add_argument("--edges", action="store_true", help="score edges (EAP / EAP-IG) and write "
                   "an edge claim plus its EAP-IG graph JSON (<out>.json)")
    c.add_argument("--method", default="eap-ig", help="with --edges: eap or eap-ig")
    c.add_argument("--steps", type=int, default=5, help="with --edges: EAP-IG steps (default 5)")
    c.add_argument("--threshold", type=float, default=None,
                   help="with --edges: keep every edge with |score| >= this (else --top N, "
                   "default the top 5%% of edges)")
    c.add_argument("--margin", type=float, default=0.05,
                   help="thresholds are the measured interval bound -/+ this (default 0.05)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto")
    c.set_defaults(func=_discover)
    z = sub.add_parser("zoo", help="list or build the zoo models (python -m circuitcheck.zoo)")
    z.add_argument("zoo_args", nargs=argparse.REMAINDER, help="list | build NAME [--out DIR]")
    z.set_defaults(func=_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    ns, rest = parser().parse_known_args(argv)
    if ns.command == "run":
        ns.pytest_args = [a for a in rest if a != "--"]
    elif rest:
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    return ns.func(ns)


if __name__ == "__main__":
    raise SystemExit(main())
