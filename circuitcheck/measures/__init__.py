"""Metrics and claim measurements; each returns a result object, never a bare float."""
from ._measurement import Measurement
from .circuit import Minimality, faithfulness, head_drops, minimality, necessity
from .metrics import METRICS, Metric

__all__ = ["Measurement", "Minimality", "faithfulness", "head_drops", "minimality",
           "necessity", "METRICS", "Metric"]
