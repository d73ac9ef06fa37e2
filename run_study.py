"""The study: noise decomposition (initialisation vs batch order), LOO protocols and IF solvers, one command.

python run_study.py            # digits3 and fmnist3, 10 and 20 per class, 10 seeds (about 55 min on 2 cores, estimated)
python run_study.py --quick    # digits3, 4 seeds, 6 test samples, 10 and 14 per class (about 10 CPU-min)
Writes results/study/report.md (see docs/study.md).
"""
from tda import cli
from tda.study.run import main

if __name__ == "__main__":
    cli.run(main)
