"""Metrics and claim measurements; each returns a result object, never a bare float."""
from ._measurement import Measurement
from .head_scores import KINDS as HEAD_SCORE_KINDS
from .head_scores import HeadScores, head_scores
from .circuit import Minimality, faithfulness, head_drops, minimality, necessity
from .hypotheses import HypothesisTest, equivalence, equivalence_test, localization, minimality_test
from .metrics import METRICS, Metric
from .quality import TaskQuality, task_quality
from .sweep import Sweep, sweep
from .stochastic import HeadEffects, StochasticAblation, compare_selection, stochastic_ablation

__all__ = ["TaskQuality", "task_quality", "Measurement", "Minimality", "faithfulness", "head_drops", "minimality",
           "necessity", "METRICS", "Metric", "HeadScores", "head_scores", "HEAD_SCORE_KINDS",
           "HeadEffects", "StochasticAblation", "compare_selection", "stochastic_ablation",
           "HypothesisTest", "equivalence", "equivalence_test", "localization",
           "minimality_test", "Sweep", "sweep"]
