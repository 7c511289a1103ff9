#!/usr/bin/env bash
# Does the size of a fine-tune's base data decide whether fine-tuning the shipped base helps?
# Arms: base data = the 400 base-control exploration grasps of a pipeline run (what the study
# and demo mix in today) vs a pre-training run's whole dataset (bootstrap + on-policy rounds);
# target = 400 exploration grasps of the control (base) or of a challenge. FineTuneRecipe,
# 1000 steps, 100 validation episodes. Resumable: an arm whose eval JSON exists is skipped.
#   research/base_data_probe.sh runs/cal runs/seed1 [seed]
set -euo pipefail
cal=${1:-runs/cal}; pre=${2:-runs/seed1}; seed=${3:-0}
py=.venv/bin/python
mapfile -t pre_bags < <(find "$pre/datasets/base" -name '*.mcap' -printf '%h\n' | sort -u)
# The last five on-policy rounds (2 500 episodes of another pre-training run's policies), and
# its last round alone (500: about b400's size, another policy's data).
mapfile -t late_bags < <(find "$pre/datasets/base" -path '*round_[5-9]*' -name '*.mcap' -printf '%h\n' | sort -u)
mapfile -t r9_bags < <(find "$pre/datasets/base" -path '*round_9*' -name '*.mcap' -printf '%h\n' | sort -u)
mapfile -t b400 < <(find "$cal/datasets/base/targets" -name '*.mcap' -printf '%h\n' | sort -u)
echo "pre-training bags: ${#pre_bags[@]}, late rounds: ${#late_bags[@]}, base-control bags: ${#b400[@]}" >&2
arm() {  # name task severity base-bags...
  local name=$1 task=$2 sev=$3; shift 3
  local out=runs/probe_basedata/${name}_s${seed}
  if [[ -f $out/eval_1000.json ]]; then echo "skip $name (done)" >&2; else
    mapfile -t tgt < <(find "$cal/datasets/$task/targets" -name '*.mcap' -printf '%h\n' | sort -u)
    $py research/finetune_steps_probe.py --run "$cal" --task "$task" --severity "$sev" \
      --steps 1000 --evaluate 1000 --seed "$seed" --output runs/probe_basedata \
      --name "${name}_s${seed}" --base-bags "$@" --target-bags "${tgt[@]}"
  fi
}
arm ctrl_b400 base 1 "${b400[@]}"
arm ctrl_bpre base 1 "${pre_bags[@]}"
arm harsh_b400 harsh_light 1.5 "${b400[@]}"
arm harsh_bpre harsh_light 1.5 "${pre_bags[@]}"
arm ctrl_blate base 1 "${late_bags[@]}"
arm harsh_blate harsh_light 1.5 "${late_bags[@]}"
arm harsh_bround9 harsh_light 1.5 "${r9_bags[@]}"
