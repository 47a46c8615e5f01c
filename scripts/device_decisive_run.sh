#!/usr/bin/env bash
# The decisive CIFAR-10-LT run on a lent GPU (docs/experiments.md, "The decisive run").
#
# Prepared and tested on CPU at tiny size only: no GPU was lent when it was written, so
# every figure it produces is still to be seen. Before calling the device tool, here:
#
#   echo /.data/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude
#   mkdir -p .data && cp ../shared/data/cifar10_lt_jpeg_pack.npz ../shared/data/jpeg_pack.py .data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl faiss-cpu==1.15.1
#
# then run it with carry [".data", ".whl"] and a timeout that leaves time for a rerun:
#
#   bash scripts/device_decisive_run.sh 8      # the suite's budget in minutes
#
# It writes everything under $OUT (the device tool brings it back): the runner benchmark
# (epoch time, syncs per step, 4 runs at once), the suite's results.json / results.png
# with per-epoch times, and the logs.
set -euo pipefail
budget_minutes="${1:-8}"
out="${OUT:-device_output}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
python3 .data/jpeg_pack.py .data/cifar10_lt_jpeg_pack.npz .data 2>&1 | tee "$out/data.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

# 1. Epoch time, syncs per step and parallel throughput of the device-resident path.
python3 benchmarks/bench_runner.py --device cuda --encoder resnet18 --batch-size 512 \
    --data .data/cifar10_lt_r100.npz --methods ntxent,tase --epochs 3 --compile --parallel 4 \
    --output "$out/bench_runner.json" 2>&1 | tee "$out/bench_runner.log"

# 2. The suite: every method the same epochs within the budget, 2 seeds, 4 jobs at once.
python3 -m tase_loss.experiments --data .data/cifar10_lt_r100.npz \
    --probe .data/cifar10_probe_100shot.npz \
    --class-names airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck \
    --encoder resnet18 --optimizer sgd --lr 0.5 --batch-size 512 --compile \
    --methods ntxent,tase,tase-oracle,tase-input,ts,rwsam --seeds 0,1 \
    --budget-minutes "$budget_minutes" --parallel 4 --no-checkpoints \
    --output "$out/decisive" 2>&1 | tee "$out/decisive.log"
