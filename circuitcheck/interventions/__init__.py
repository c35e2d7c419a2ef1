"""Interventions: hook builders that act on many variants per batch."""
from .ablation import (Ablation, AblationValues, Readout, Variants, ablation_values,
                       final_logprobs, run_variants)

__all__ = ["Ablation", "AblationValues", "Readout", "Variants", "ablation_values", "final_logprobs",
           "run_variants"]
