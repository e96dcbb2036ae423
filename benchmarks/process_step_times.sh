#!/usr/bin/env bash
# Step time of one process vs two (DDP, FSDP2) on CPU processes, the same global batch of 2 rows, 12 steps each:
#   bash benchmarks/process_step_times.sh runs/gsm8k/traj     (a `hf-cllm collect` folder of GSM8K rows)
# Prints each run's train_runtime and its losses at steps 4, 8, 12 (they should agree). Figures: docs/training.md.
set -euo pipefail
trajectories=${1:?usage: $0 TRAJECTORY_FOLDER}
out=${2:-runs/process_step_times}
common=(--config examples/gsm8k_smollm2/jacobi_forcing.yaml --trajectories "$trajectories" --max_steps 12
        --eval_strategy no --eval_on_start false --save_strategy no --logging_steps 4 --use_cpu true
        --per_device_train_batch_size 1)
mkdir -p "$out"
OMP_NUM_THREADS=2 hf-cllm train "${common[@]}" --output_dir "$out/one" --gradient_accumulation_steps 2 \
    > "$out/one.log" 2>&1
for kind in ddp fsdp2; do
    OMP_NUM_THREADS=1 python -m accelerate.commands.launch --config_file "examples/accelerate/${kind}_cpu.yaml" \
        -m hf_cllm train "${common[@]}" --output_dir "$out/$kind" > "$out/$kind.log" 2>&1
done
for kind in one ddp fsdp2; do
    echo "$kind: $(grep -o "'train_runtime': '[0-9.]*'" "$out/$kind.log") $(grep -o "'loss': '[0-9.]*'" "$out/$kind.log" | tr '\n' ' ')"
done
