"""Leave-one-out ground truth of an experiment's seeds: all N retrainings as one vectorised ensemble."""
from tda import attribution, cli
from tda.methods import LOO


def main(argv=None):
    return attribution.main(LOO, __doc__, argv)


if __name__ == "__main__":
    cli.run(main)
