"""The linear datamodeling score (LDS): retrain every seed on random subsets of the training set (one ensemble per
seed), then score each method by how well its summed attributions rank those retrainings' outcomes.

python run_lds.py --experiment E --seed_id all [--subsets 50 --alpha 0.5]    # ground truth, then every method's LDS
python run_lds.py --experiment E --seed_id 3                                 # one seed's ground truth only
python run_lds.py --experiment E --evaluate [--scores FILE --method_name NAME --sign 1]   # only the LDS table
Writes tda_scores/E/lds/ (subsets and outcomes) and results/E/lds.csv, lds_per_test.csv, lds.png (docs/study.md).
"""
from __future__ import annotations

from tda import cli
from tda.config import parse_experiment
from tda.lds.evaluate import evaluate
from tda.lds.run import LDSSettings, run_lds
from tda.results.report import write_report
from tda.ranges import NON_NEGATIVE, POSITIVE_INT, Range, ranged
from tda.seeds import load_seeds, resolve_seed_ids
from tda.workers import raise_failed_rows


def main(argv: list[str] | None = None):
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--experiment", required=True, help="<model>_<task>_<n>pc, e.g. cnn_digits3_10pc")
    p.add_argument("--seed_id", default=None, help="index into random_seeds.pt (0..9) or 'all' (then the LDS table "
                   "follows); not needed with --evaluate")
    p.add_argument("--subsets", type=ranged(int, Range(ge=3)), default=50, help="random subsets S (default 50)")
    p.add_argument("--alpha", type=ranged(float, Range(gt=0, le=0.99)), default=0.5,
                   help="fraction of the training samples in each subset (default 0.5)")
    p.add_argument("--subset_seed", type=ranged(int, NON_NEGATIVE), default=0, help="seed of the subsets' draw "
                   "(default 0); the same subsets serve every seed of the experiment")
    p.add_argument("--chunk", type=ranged(int, POSITIVE_INT), default=None,
                   help="retrain at most this many subsets at once (default: as many as free memory allows)")
    p.add_argument("--evaluate", action="store_true", help="only write the LDS table from the outcomes there are")
    p.add_argument("--scores", nargs="+", default=[], help="external scores [seeds, checkpoints, N, M] (a .pt/.npy "
                   "file or a directory with one file per seed, as run_pvalues.py --scores takes them)")
    p.add_argument("--method_name", nargs="+", default=[], help="the name of each --scores in the table")
    p.add_argument("--sign", nargs="+", type=int, choices=[1, -1], default=None,
                   help="per --scores: 1 if a positive score means the sample helps (TRAK, Grad-Dot), -1 if negative "
                        "(IF's convention); default 1")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to retrain (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="recompute finished outcomes and tables")
    p.add_argument("--workers", type=ranged(int, POSITIVE_INT), default=None,
                   help="seeds retrained in parallel processes (default: one per CPU core or visible GPU)")
    args = p.parse_args(argv)
    if args.seed_id is None and not args.evaluate:
        p.error("give --seed_id (0..9 or all) to compute the ground truth, or --evaluate for the table alone")
    signs = args.sign or [1] * len(args.scores)
    if len(args.method_name) != len(args.scores) or len(signs) != len(args.scores):
        p.error("give one --method_name (and at most one --sign) per --scores")
    cfg = parse_experiment(args.experiment)
    rows = []
    if args.seed_id is not None:
        seeds = load_seeds(cfg.root)
        chosen = [seeds[k] for k in resolve_seed_ids(str(args.seed_id), seeds)]
        device = cli.resolve_device(args.device)
        rows = run_lds(cfg, chosen, LDSSettings(args.subsets, args.alpha, args.subset_seed), device, args.overwrite,
                       cli.workers(args, device), chunk=args.chunk, strict=False)
        for r in rows:
            print(f"seed {r['seed']}: " + ("already done, kept" if r["skipped"] else f"failed: {r['error'].splitlines()[0]}"
                                           if r.get("error") else f"done in {r['seconds']:.1f} s") + r.get("note", ""))
        print(f"LDS outcomes in {cfg.scores_dir / 'lds'}/<seed>.pt")
    path = None
    if args.evaluate or args.seed_id == "all":
        path = evaluate(cfg, list(zip(args.scores, args.method_name, signs)), args.overwrite,
                        need_scores=args.evaluate or bool(args.scores))
        if path is not None:
            print(f"LDS table: {path}")
            if (cfg.results_dir / "mean_p_values.csv").exists():  # the experiment's report shows the LDS too
                print(f"report: {write_report(cfg)}")
    else:
        print(f"the LDS table once every seed is done: python run_lds.py --experiment {cfg.name} --evaluate")
    raise_failed_rows(rows)
    return path


if __name__ == "__main__":
    cli.run(main)
