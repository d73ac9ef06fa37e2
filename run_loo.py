"""Leave-one-out ground truth of an experiment's seeds: all N retrainings as one vectorised ensemble (DESIGN 5)."""
from tda import cli
from tda.attribution import run_loo, summary_lines
from tda.methods.loo import PROTOCOLS


def main(argv=None):
    p = cli.parser(__doc__)
    cli.add_experiment_args(p)
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="paper: retrain from each checkpoint, baseline the checkpoint (the reference; CNN default); "
                        "paired: same plus a control member as baseline; scratch: train full and LOO models "
                        "side by side from the initialisation (ViT default)")
    p.add_argument("--chunk", type=int, default=None, help="train at most this many LOO models at once (default: all)")
    args = p.parse_args(argv)
    cfg, seeds = cli.experiment_and_seeds(args)
    rows = run_loo(cfg, seeds, cli.resolve_device(args.device), args.overwrite, args.protocol, args.chunk)
    print("\n".join(summary_lines(cfg, ("loo",), rows)))


if __name__ == "__main__":
    cli.run(main)
