"""The results steps, after the attribution scores exist: per-pair p-values over the posterior samples
(seeds x last K checkpoints), their mean and significance, correlations between methods, report.md.

inventory: which score files exist, loaded as `MethodScores` [seeds, ckpts, N, M]; sources: scores read
block by block; pairs: the per-pair statistics and tallies, one implementation for the scripts and the
API; outputs: the manifest that skips finished files and rewrites only changed bytes; pvalues (with
perpair, pairfile, trust), correlations (with matching, corrmaths): the two steps; external(_scores):
scores computed elsewhere; report: report.md and the final summary (`python -m tda.results.report`).
The report module is not imported here, so that `python -m tda.results.report` runs it only once:
import it as `tda.results.report`.
"""
from .correlations import (CorrelationSummary, correlations_step, correlations_with_scores, format_correlations,
                           write_correlations)
from .external_scores import add_scores_args
from .inventory import Inventory, MethodScores, add_methods_arg, take_inventory
from .outputs import Outputs
from .pvalues import PValueSummary, format_pvalue_summary, pvalues_step, write_pvalues

__all__ = ["CorrelationSummary", "Inventory", "MethodScores", "Outputs", "PValueSummary", "add_methods_arg",
           "add_scores_args", "correlations_step", "correlations_with_scores", "format_correlations",
           "format_pvalue_summary", "pvalues_step", "take_inventory", "write_correlations", "write_pvalues"]
