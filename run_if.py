"""Influence-function attributions of an experiment's seeds: LiSSA (the reference) or conjugate gradient (DESIGN 5)."""
from tda import cli
from tda.attribution import run_if, summary_lines


def main(argv=None):
    p = cli.parser(__doc__)
    cli.add_experiment_args(p)
    p.add_argument("--solver", choices=["lissa", "cg"], default="lissa",
                   help="lissa: the reference's one-pass FastIF recursion (nearly a scaled Grad-Dot); "
                        "cg: conjugate gradient on the damped full training Hessian")
    p.add_argument("--order", choices=["auto", "direct", "transposed"], default="auto",
                   help="LiSSA: run the recursion on the test gradients (direct) or, equivalently, on the "
                        "training gradients (transposed); auto takes the smaller set")
    p.add_argument("--damping", type=float, default=None, help="CG: lambda in (H + lambda I) (default: the weight decay)")
    p.add_argument("--tol", type=float, default=1e-4, help="CG: relative residual to reach")
    p.add_argument("--max_iter", type=int, default=500, help="CG: iteration limit")
    p.add_argument("--chunk", type=int, default=64, help="Hessian-vector products computed at once")
    args = p.parse_args(argv)
    cfg, seeds = cli.experiment_and_seeds(args)
    rows = run_if(cfg, seeds, cli.resolve_device(args.device), args.overwrite, args.solver, args.order,
                  args.damping, args.tol, args.max_iter, args.chunk)
    print("\n".join(summary_lines(cfg, ("if",), rows)))


if __name__ == "__main__":
    cli.run(main)
