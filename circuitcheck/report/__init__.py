"""Run reports: ``results.json`` (versioned schema) and a self-contained ``index.html``."""
from ._write import SCHEMA_VERSION, write_report

__all__ = ["SCHEMA_VERSION", "write_report"]
