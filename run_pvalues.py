"""Per-pair p-values of every TDA method over seeds and 1..5 checkpoints, their mean and significance (DESIGN 6)."""
from tda import cli, report
from tda.config import parse_experiment


def main(argv=None):
    p = cli.parser(__doc__)
    cli.add_experiment_args(p, seeds=False)
    report.add_methods_arg(p)
    args = p.parse_args(argv)
    cfg = parse_experiment(args.experiment)
    summary = report.pvalues_step(cfg, args.methods, args.overwrite)
    path = report.write_report(cfg)
    print(report.format_pvalue_summary(summary))
    print("p-value histograms: " + ", ".join(map(str, summary.figures)))
    print(f"per-pair p-values in {cfg.results_dir}/pvalues_<method>_across_<K>_ckpts.csv; report: {path}")
    return summary


if __name__ == "__main__":
    cli.run(main)
