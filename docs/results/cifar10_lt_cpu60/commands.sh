#!/usr/bin/env bash
# CIFAR-10-LT (JPEG-decoded copy, rho = 100) at 16x16, small CNN, 60 epochs, warm-up 10,
# 3 seeds, NT-Xent vs TASE (default estimator: knn-density) vs tase-oracle (true class
# frequencies). 2 shared CPU cores, 2 jobs at once, 1 thread each, pure PyTorch path
# (TASE_LOSS_DISABLE_EXT=1). Seed 0 ran at commit 5b6974e, seeds 1 and 2 at 4ebd407 (same
# method, runner and estimator; 4ebd407 adds the lean reference path, equal to float32
# rounding, tested). About 20 minutes per run, 80 minutes in all.
set -euo pipefail
common=(--data ../shared/data/cifar10_lt_r100.npz --probe ../shared/data/cifar10_probe_100shot.npz
        --class-names airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck
        --encoder small-cnn --image-size 16 --epochs 60 --warmup-epochs 10
        --methods ntxent,tase,tase-oracle --parallel 2 --threads 2)
TASE_LOSS_DISABLE_EXT=1 python -m tase_loss.experiments "${common[@]}" --seeds 0 --output runs/cifar60_s0
TASE_LOSS_DISABLE_EXT=1 python -m tase_loss.experiments "${common[@]}" --seeds 1,2 --output runs/cifar60_s12
python -m tase_loss.experiments --merge runs/cifar60_s0/jobs/*/results.json runs/cifar60_s12/jobs/*/results.json \
    --output docs/results/cifar10_lt_cpu60
