"""Per-pair p-values of every TDA method over seeds and 1..5 checkpoints, their mean and significance."""
from tda import cli, results
from tda.config import parse_experiment
from tda.results.report import write_report


def main(argv: list[str] | None = None) -> "results.PValueSummary":
    p = cli.parser(__doc__)
    cli.add_experiment_args(p, seeds=False)
    results.add_methods_arg(p)
    args = p.parse_args(argv)
    cfg = parse_experiment(args.experiment)
    summary = results.pvalues_step(cfg, args.methods, args.overwrite)
    path = write_report(cfg)
    print(results.format_pvalue_summary(summary))
    print("p-value histograms: " + ", ".join(map(str, summary.figures)))
    print(f"per-pair p-values in {cfg.results_dir}/pvalues_<method>_across_<K>_ckpts.csv; report: {path}")
    return summary


if __name__ == "__main__":
    cli.run(main)
