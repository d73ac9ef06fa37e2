"""Launchers beside the local one: the whole pipeline as Slurm jobs (`python -m tda.launch`, or
`bash run_experiment.sh EXPERIMENT --launcher slurm`).

plan.py turns experiments into a DAG of jobs, sbatch.py writes their scripts and submits them,
wait.py follows them to the end and names the tasks that failed, __main__.py is the command line.
"""
