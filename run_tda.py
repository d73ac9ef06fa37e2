"""Any registered TDA method on an experiment's seeds: `--method NAME`, then the method's own options."""
import argparse
import sys

from tda import attribution, cli
from tda.methods import REGISTRY


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method")
    method = REGISTRY.get(pre.parse_known_args(argv)[0].method)
    if method is None:  # no or an unknown method, or --help: the general usage (or a one-line error)
        p = cli.parser(__doc__)
        p.add_argument("--method", required=True, choices=list(REGISTRY),
                       help=" ".join(f"{n}: {m.__doc__.splitlines()[0].rstrip('.')}." for n, m in REGISTRY.items())
                       + " `--method NAME --help` lists that method's options.")
        cli.add_experiment_args(p)
        p.parse_args(argv)
    return attribution.main(method, f"{method.__doc__.splitlines()[0]} (run_tda.py --method {method.name})",
                            argv, method_flag=True)


if __name__ == "__main__":
    cli.run(main)
