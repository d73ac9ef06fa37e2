#!/usr/bin/env bash
# The whole pipeline of one experiment, every step skipping finished outputs (DESIGN 1).
# Usage: bash run_experiment.sh EXPERIMENT     e.g. bash run_experiment.sh cnn_digits3_10pc
set -euo pipefail
EXP=${1:?usage: run_experiment.sh EXPERIMENT  (e.g. cnn_digits3_10pc)}
PY=${PYTHON:-python}
task=$(echo "$EXP" | cut -d_ -f2)
n=$(echo "$EXP" | cut -d_ -f3 | sed 's/pc$//')
cd "$(dirname "$0")"

$PY run_subset_generation.py --task "$task" --num_per_class "$n"
$PY run_cnn_training.py --experiment "$EXP" --seed_id all
