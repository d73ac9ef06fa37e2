"""Grad-Dot and Grad-Cos attributions of an experiment's seeds (DESIGN 5)."""
from tda import cli
from tda.attribution import run_gd_gc, summary_lines


def main(argv=None):
    p = cli.parser(__doc__)
    cli.add_experiment_args(p)
    p.add_argument("--chunk", type=int, default=256, help="per-sample gradients computed at once")
    args = p.parse_args(argv)
    cfg, seeds = cli.experiment_and_seeds(args)
    rows = run_gd_gc(cfg, seeds, cli.resolve_device(args.device), args.overwrite, args.chunk)
    print("\n".join(summary_lines(cfg, ("gd", "gc"), rows)))


if __name__ == "__main__":
    cli.run(main)
