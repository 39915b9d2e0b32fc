#!/usr/bin/env bash
# Data-parallel training with torchrun: the same `semimatch train` command, one process per GPU
# (or per CPU share). semimatch has no launcher of its own and no fixed port.
#
#   bash examples/torchrun_launch.sh [OUT]          # 2 CPU processes (gloo) on digits
#
# On a machine with 8 GPUs the same command reads:
#   torchrun --standalone --nproc-per-node=8 -m semimatch train \
#       --preset cifar10-40-softmatch --out runs/c10-40-softmatch --resume auto
#
# --batch-size is the global batch (each of the W processes gets B/W); statistics and metrics
# are computed over the global batch; only rank 0 writes. --resume auto makes the command
# restartable (torchrun --max-restarts=3 continues from the last checkpoint).
# SEMIMATCH_EXAMPLE_SMALL=1 trains a few iterations only (the test suite runs it that way);
# TORCHRUN overrides the launcher (default: torchrun).
set -euo pipefail

OUT=${1:-runs/digits-ddp}
ITERATIONS=300
EVAL_EVERY=100
if [ "${SEMIMATCH_EXAMPLE_SMALL:-0}" = 1 ]; then
    ITERATIONS=4
    EVAL_EVERY=2
fi

# CPU processes: give each its share of the cores (--threads 1 for 2 processes on 2 cores).
${TORCHRUN:-torchrun} --standalone --nproc-per-node=2 -m semimatch train \
    --dataset digits --algorithm softmatch --num-labels 20 --batch-size 32 \
    --iterations "$ITERATIONS" --eval-every "$EVAL_EVERY" --threads 1 \
    --out "$OUT" --resume auto
