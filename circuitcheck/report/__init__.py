"""Run reports: ``results.json`` (versioned schema) and a self-contained ``index.html``,
and the comparison of a run with a saved baseline."""
from ._write import SCHEMA_VERSION, build_document, write_report
from .baseline import (BaselineError, Drift, annotate, compare, default_tolerance, load_baseline,
                       record_key, save_baseline)

__all__ = ["SCHEMA_VERSION", "BaselineError", "Drift", "annotate", "build_document", "compare",
           "default_tolerance", "load_baseline", "record_key", "save_baseline", "write_report"]
