#!/usr/bin/env bash
# The whole pipeline of one or more experiments for all ten seeds, every step skipping finished outputs.
#
# Usage: bash run_experiment.sh EXPERIMENT [EXPERIMENT ...] [--methods M,M,...] [--device D]
#            [--METHOD.OPTION VALUE ...] [--launcher slurm [SLURM_OPTIONS]] [-- TRAINING_ARGS]
#   bash run_experiment.sh cnn_digits3_10pc
#   bash run_experiment.sh cnn_digits3_10pc cnn_digits3_20pc --loo.protocol scratch --if.solver cg --methods loo,if,gd
#   bash run_experiment.sh vit_digits3_10pc -- --model_name_or_path DIR
#   bash run_experiment.sh cnn_mnist3_10pc cnn_mnist3_20pc --launcher slurm --partition gpu --gpus-per-task 1 --wait
# The experiments run one after the other, then one summary compares them. --methods picks the registered TDA
# methods that run (default: all); --device goes to training and every TDA step; --METHOD.OPTION VALUE gives a
# method an option (e.g. --loo.protocol scratch, --if.hessian gauss-newton), checked before anything runs.
# Arguments after `--` go to the training script only (run_cnn_training.py, run_vit_finetuning.py for vit_*, or
# a model family's own); locally an option the pipeline does not know goes there too, as in
# `bash run_experiment.sh vit_digits3_10pc --model_name_or_path DIR`. $PYTHON picks the interpreter (default python).
#
# --launcher local (the default) runs the steps here, one after the other, in one interpreter
# (python -m tda.pipeline --help). --launcher slurm submits the same steps as Slurm jobs instead
# (python -m tda.launch --help lists its options; see docs/cluster.md).
#
# An interrupted run loses nothing: rerun the same command and it continues where it stopped. To redo a
# step, run its script with --overwrite (or delete its outputs).
set -euo pipefail
usage="usage: bash run_experiment.sh EXPERIMENT [EXPERIMENT ...] [options] [-- TRAINING_ARGS]  (e.g. cnn_digits3_10pc; options: python -m tda.pipeline --help, --launcher slurm: docs/cluster.md)"
PY=${PYTHON:-python}
cd "$(dirname "$0")"

launcher=local
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --) args+=("$@"); break ;;  # training arguments: passed on as they are
        --launcher) [[ $# -ge 2 ]] || { echo "error: --launcher needs a value: local or slurm" >&2; exit 2; }
                    launcher=$2; shift 2 ;;
        --launcher=*) launcher=${1#--launcher=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
case $launcher in
    local) set -- ${args[@]+"${args[@]}"} ;;
    slurm) exec "$PY" -m tda.launch ${args[@]+"${args[@]}"} ;;
    *) echo "error: unknown launcher '$launcher': choose local (the default) or slurm" >&2; exit 2 ;;
esac

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "$usage" >&2
    exit 2
fi
# the steps of every experiment (subsets, training, each TDA method, p-values, correlations, summary), then the
# summary of them all, each step's entry script called in one interpreter (tda/pipeline.py)
exec "$PY" -m tda.pipeline "$@"
