"""Additional-training-step attributions of an experiment's seeds: one fresh-Adam step per training sample."""
from tda import attribution, cli
from tda.methods import ATS


def main(argv=None):
    return attribution.main(ATS, __doc__, argv)


if __name__ == "__main__":
    cli.run(main)
