"""The results steps, after the attribution scores exist: per-pair p-values over the posterior samples
(seeds x last K checkpoints), their mean and significance, correlations between methods, report.md.

inventory: which score files exist, loaded as `MethodScores` [seeds, ckpts, N, M]; outputs: the manifest
that skips finished files and rewrites only changed bytes; pvalues, correlations: the two steps; report:
report.md and the final summary (`python -m tda.results.report`). The report module is not imported
here, so that `python -m tda.results.report` runs it only once: import it as `tda.results.report`.
"""
from .correlations import CorrelationSummary, correlations_step, format_correlations, write_correlations
from .inventory import Inventory, MethodScores, add_methods_arg, take_inventory
from .outputs import Outputs
from .pvalues import PValueSummary, format_pvalue_summary, pvalues_step, write_pvalues

__all__ = ["CorrelationSummary", "Inventory", "MethodScores", "Outputs", "PValueSummary", "add_methods_arg",
           "correlations_step", "format_correlations", "format_pvalue_summary", "pvalues_step",
           "take_inventory", "write_correlations", "write_pvalues"]
