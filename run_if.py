"""Influence-function attributions of an experiment's seeds: LiSSA (the reference) or conjugate gradient."""
from tda import attribution, cli
from tda.methods import IF


def main(argv=None):
    return attribution.main(IF, __doc__, argv)


if __name__ == "__main__":
    cli.run(main)
