"""Per-pair p-values of every TDA method over seeds and 1..5 checkpoints, their mean and significance.

With --scores, of attribution scores computed anywhere, shaped [seeds, checkpoints, N, M] (docs/own_data.md):
--experiment then only names results/<NAME>/, and an experiment's own methods join them when it has scores.
"""
from tda import cli, results
from tda.config import parse_experiment
from tda.results.external import pvalues_with_scores
from tda.results.report import write_report


def main(argv: list[str] | None = None) -> "results.PValueSummary":
    p = cli.parser(__doc__)
    cli.add_experiment_args(p, seeds=False)
    results.add_methods_arg(p)
    results.add_scores_args(p)
    args = p.parse_args(argv)
    if args.scores or args.method_name or args.train_indices or args.test_indices:
        if not args.scores or not args.method_name:
            p.error("--scores and --method_name go together (and --train_indices/--test_indices need them)")
        summary, path = pvalues_with_scores(args.experiment, args.scores, args.method_name, args.train_indices,
                                            args.test_indices, args.methods, args.overwrite)
        out_dir = path.parent
    else:
        cfg = parse_experiment(args.experiment)
        summary = results.pvalues_step(cfg, args.methods, args.overwrite)
        path, out_dir = write_report(cfg), cfg.results_dir
    print(results.format_pvalue_summary(summary))
    print("p-value histograms: " + ", ".join(map(str, summary.figures)))
    print(f"per-pair results in {out_dir}/: pairs_<method>.parquet (every pair and K: mu, sigma, snr, p_z, p_t, q_t), "
          f"pvalues_<method>_across_<K>_ckpts.csv (the paper's z-test); report: {path}")
    return summary


if __name__ == "__main__":
    cli.run(main)
