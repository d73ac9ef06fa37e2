"""Pearson and Spearman correlations between TDA methods of mean, std and SNR at K = 5 checkpoints."""
from tda import cli, results
from tda.config import parse_experiment
from tda.results.report import write_report


def main(argv: list[str] | None = None) -> "results.CorrelationSummary":
    p = cli.parser(__doc__)
    cli.add_experiment_args(p, seeds=False)
    results.add_methods_arg(p)
    args = p.parse_args(argv)
    cfg = parse_experiment(args.experiment)
    summary = results.correlations_step(cfg, args.methods, args.overwrite)
    print(results.format_correlations(summary.matrices, cfg.n_ckpts))
    print("heatmaps: " + ", ".join(map(str, summary.figures)))
    if (cfg.results_dir / "mean_p_values.csv").exists():
        print(f"report: {write_report(cfg)}")
    return summary


if __name__ == "__main__":
    cli.run(main)
