#!/usr/bin/env bash
# Are the demo's grasps (recorded by the collector from the policy node) worse fine-tuning data
# than the pipeline's (collect_targets)? Fine-tunes of the shipped base with FineTuneRecipe,
# 1000 steps, 100 validation episodes, on: the demo's own two bags; the pipeline's two; and the
# two crossings (pipeline base + demo target, demo base + pipeline target). Resumable: an arm
# whose eval JSON exists is skipped.
#   research/demo_data_probe.sh runs/demo-own runs/cal harsh_light 1.5 [seed]
set -euo pipefail
demo=$1; cal=$2; task=$3; sev=$4; seed=${5:-0}
py=.venv/bin/python
demo_bag() { $py -c "import json,sys; print(json.load(open('$demo/summary.json'))['datasets']['$1'])"; }
demo_base=$(demo_bag base); demo_target=$(demo_bag target)
mapfile -t cal_base < <(find "$cal/datasets/base/targets" -name '*.mcap' -printf '%h\n' | sort -u)
mapfile -t cal_target < <(find "$cal/datasets/$task/targets" -name '*.mcap' -printf '%h\n' | sort -u)
out=runs/probe_demodata
arm() {  # name "base bags" "target bags"
  local name=${task}_${1}_s${seed}
  if [[ -f $out/$name/eval_1000.json ]]; then echo "skip $name (done)" >&2; return; fi
  # shellcheck disable=SC2086
  $py research/finetune_steps_probe.py --task "$task" --severity "$sev" --steps 1000 \
    --evaluate 1000 --seed "$seed" --threads 2 --output $out --name "$name" \
    --base-bags $2 --target-bags $3
}
arm demo_demo "$demo_base" "$demo_target"
if [[ ${#cal_base[@]} -gt 0 && ${#cal_target[@]} -gt 0 ]]; then
  arm cal_cal "${cal_base[*]}" "${cal_target[*]}"
  arm cal_demo "${cal_base[*]}" "$demo_target"
  arm demo_cal "$demo_base" "${cal_target[*]}"
fi
