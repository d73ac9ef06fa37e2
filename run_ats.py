"""Additional-training-step attributions of an experiment's seeds: one fresh-Adam step per training sample (DESIGN 5)."""
from tda import cli
from tda.attribution import run_ats, summary_lines


def main(argv=None):
    p = cli.parser(__doc__)
    cli.add_experiment_args(p)
    p.add_argument("--chunk", type=int, default=64, help="perturbed models evaluated at once")
    args = p.parse_args(argv)
    cfg, seeds = cli.experiment_and_seeds(args)
    rows = run_ats(cfg, seeds, cli.resolve_device(args.device), args.overwrite, args.chunk)
    print("\n".join(summary_lines(cfg, ("ats",), rows)))


if __name__ == "__main__":
    cli.run(main)
