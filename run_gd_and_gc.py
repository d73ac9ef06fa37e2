"""Grad-Dot and Grad-Cos attributions of an experiment's seeds."""
from tda import attribution, cli
from tda.methods import GradSim


def main(argv=None):
    return attribution.main(GradSim, __doc__, argv)


if __name__ == "__main__":
    cli.run(main)
