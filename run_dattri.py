"""dattri's TRAK or TracIn on every seed and checkpoint of an experiment, stored and tested like our scores.

An extra (`pip install -r req-extra.txt`): writes tda_scores/<experiment>/dattri_<method>/<seed>.pt, each
{scores [5, N, M], ckpt_epochs, train_indices, test_indices, settings, provenance}, one dattri attribution
per checkpoint: a single-model TRAK (TRAK's margin, projected to --proj_dim, default N // 2 so that its
kernel is invertible, ridge --ridge), or TracIn with the learning rate as weight. Then
`python run_pvalues.py --experiment E --scores tda_scores/E/dattri_<method> --method_name dattri_<method>`
puts it on the p-value table beside our methods.
"""
from __future__ import annotations

from tda import cli
from tda.attribution import run_method, summary_lines
from tda.config import TDAError
from tda.ranges import NON_NEGATIVE, POSITIVE_INT, ranged
from tda.dattri_methods import MAX_PROJ_DIM, METHODS, check_trak, dattri_version, default_proj_dim
from tda.workers import raise_failed_rows


def main(argv: list[str] | None = None) -> list[str]:
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_experiment_args(p)
    p.add_argument("--method", required=True, choices=list(METHODS), help="dattri's TRAK or TracIn")
    p.add_argument("--proj_dim", type=ranged(int, POSITIVE_INT), default=None,
                   help=f"dimension of dattri's random gradient projection (default: TRAK N // 2 training samples, "
                        f"at most {MAX_PROJ_DIM}; TracIn {MAX_PROJ_DIM}); TRAK needs it below N unless --ridge > 0")
    p.add_argument("--ridge", type=ranged(float, NON_NEGATIVE), default=0.0,
                   help="TRAK only: lambda of (Phi^T Phi + lambda I) as a fraction of the kernel's mean eigenvalue "
                        "(default 0, TRAK's own)")
    p.add_argument("--proj_seed", type=ranged(int, NON_NEGATIVE), default=0, help="seed of the random projection (default 0)")
    args = p.parse_args(argv)
    cfg, seeds = cli.experiment_and_seeds(args)
    if cfg.model == "vit":
        raise TDAError("run_dattri.py takes the CNN-like families (cnn, cnn3l and models of your own), not the ViT")
    if args.method == "trak":
        proj_dim = default_proj_dim(cfg.n_train) if args.proj_dim is None else args.proj_dim
        check_trak(proj_dim, args.ridge, cfg.n_train)
        method = METHODS["trak"](proj_dim=proj_dim, proj_seed=args.proj_seed, ridge=args.ridge)
    else:
        if args.ridge != 0:
            raise TDAError("--ridge is TRAK's: TracIn inverts no kernel")
        proj_dim = MAX_PROJ_DIM if args.proj_dim is None else args.proj_dim
        if proj_dim < 1:
            raise TDAError(f"--proj_dim must be >= 1, got {proj_dim}")
        method = METHODS["tracin"](proj_dim=proj_dim, proj_seed=args.proj_seed)
    dattri_version()
    device = cli.resolve_device(args.device)
    rows = run_method(method, cfg, seeds, device, args.overwrite, workers=cli.workers(args, device), strict=False)
    output = method.name
    lines = summary_lines(cfg, method, rows)
    lines.append(f"test them: python run_pvalues.py --experiment {cfg.name} --scores {cfg.scores_dir / output} "
                 f"--method_name {output}")
    print("\n".join(lines))
    raise_failed_rows(rows)
    return lines


if __name__ == "__main__":
    cli.run(main)
