"""Pearson and Spearman correlations between TDA methods of mean, std and SNR at K = 5 checkpoints (DESIGN 6)."""
from tda import cli, report
from tda.config import parse_experiment


def main(argv=None):
    p = cli.parser(__doc__)
    cli.add_experiment_args(p, seeds=False)
    report.add_methods_arg(p)
    args = p.parse_args(argv)
    cfg = parse_experiment(args.experiment)
    summary = report.correlations_step(cfg, args.methods, args.overwrite)
    print(report.format_correlations(summary.matrices))
    print("heatmaps: " + ", ".join(map(str, summary.figures)))
    if (cfg.results_dir / "mean_p_values.csv").exists():
        print(f"report: {report.write_report(cfg)}")
    return summary


if __name__ == "__main__":
    cli.run(main)
