"""Pearson and Spearman correlations between TDA methods of mean, std and SNR at K = 5 checkpoints.

With --scores, methods computed anywhere, [seeds, checkpoints, N, M] (docs/own_data.md), join the comparison:
they are correlated with each other and with the experiment's own methods (LOO included) over the train-test
pairs and seeds they share, matched by dataset index and seed; results go to results/<NAME>/.
"""
from tda import cli, results
from tda.config import parse_experiment
from tda.results.correlations import correlations_with_scores
from tda.results.external import experiment_or_none, refresh_report, results_name


def main(argv: list[str] | None = None) -> "results.CorrelationSummary":
    p = cli.parser(__doc__)
    cli.add_experiment_args(p, seeds=False)
    results.add_methods_arg(p)
    results.add_scores_args(p)
    args = p.parse_args(argv)
    if args.scores or args.method_name or args.train_indices or args.test_indices:
        if not args.scores or not args.method_name:
            p.error("--scores and --method_name go together (and --train_indices/--test_indices need them)")
        cfg = experiment_or_none(args.experiment)
        summary = correlations_with_scores(cfg, results_name(args.experiment), args.scores, args.method_name,
                                           args.train_indices, args.test_indices, args.methods, args.overwrite)
    else:
        cfg = parse_experiment(args.experiment)
        summary = results.correlations_step(cfg, args.methods, args.overwrite)
    print(results.format_correlations(summary.matrices, cfg.n_ckpts if cfg is not None else 5))
    print("heatmaps: " + ", ".join(map(str, summary.figures)))
    report = refresh_report(args.experiment)
    if report is not None:
        print(f"report: {report}")
    return summary


if __name__ == "__main__":
    cli.run(main)
