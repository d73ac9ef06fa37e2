#!/usr/bin/env bash
# The whole pipeline of one experiment for all ten seeds, every step skipping finished outputs.
#
# Usage: bash run_experiment.sh EXPERIMENT [TRAINING_ARGS...]
#        bash run_experiment.sh EXPERIMENT [EXPERIMENT ...] --launcher slurm [SLURM_OPTIONS] [-- TRAINING_ARGS]
#   bash run_experiment.sh cnn_digits3_10pc
#   bash run_experiment.sh vit_digits3_10pc --model_name_or_path DIR
#   bash run_experiment.sh cnn_mnist3_10pc cnn_mnist3_20pc --launcher slurm --partition gpu --gpus-per-task 1 --wait
# Arguments after the experiment name go to the training script only (run_cnn_training.py, or
# run_vit_finetuning.py for vit_* experiments), e.g. --model_name_or_path or --device cpu; the TDA
# scripts read the ViT's base model from its checkpoints. $PYTHON picks the interpreter (default python).
#
# --launcher local (the default) runs the steps here, one after the other. --launcher slurm submits
# them as Slurm jobs instead (python -m tda.launch --help lists its options; see docs/cluster.md).
#
# An interrupted run loses nothing: rerun the same command and it continues where it stopped. To redo a
# step, run its script with --overwrite (or delete its outputs).
set -euo pipefail
usage="usage: bash run_experiment.sh EXPERIMENT [TRAINING_ARGS...]  (e.g. cnn_digits3_10pc; --launcher slurm: see docs/cluster.md)"
PY=${PYTHON:-python}
cd "$(dirname "$0")"

launcher=local
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
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
EXP=$1
shift

if [[ ! $EXP =~ ^([a-z0-9]+)_([a-z0-9]+)_([0-9]+)pc(_[a-z]+)?$ ]]; then
    echo "error: bad experiment name '$EXP': expected <model>_<task>_<n>pc, e.g. cnn_digits3_10pc" >&2
    exit 2
fi
# the steps (subsets, training, LOO, ATS, IF, GD and GC, p-values, correlations), then the summary,
# each step's entry script called in one interpreter (tda/pipeline.py)
exec "$PY" -m tda.pipeline "$EXP" "$@"
