"""``python -m circuitcheck.zoo {build,list}``: build or list the zoo models."""

from .build import main

if __name__ == "__main__":
    raise SystemExit(main())
