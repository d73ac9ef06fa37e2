"""The study: noise decomposition (initialisation vs batch order), LOO protocols and IF solvers, one command.

python run_study.py            # digits3 and fmnist3, 10 and 20 per class, 10 seeds (about 45 min on 2 cores)
python run_study.py --quick    # digits3, 5 seeds, 9 test samples (a few minutes)
Writes results/study/report.md (see docs/study.md).
"""
from tda import cli
from tda.study.run import main

if __name__ == "__main__":
    cli.run(main)
