#!/usr/bin/env bash
# CIFAR-10-LT (JPEG-decoded copy, rho = 100) at 16x16, small CNN, 60 epochs, warm-up 10,
# 8 seeds, the settings of docs/results/cifar10_lt_cpu60/commands.sh: TASE with the
# stable-count estimator (issue 22's learning check), plus ntxent and tase-oracle of seed 0
# rerun at this commit to check that the earlier runs of those two methods (commit 7ac1a22's
# training code) are reproduced bit for bit, so that they pair with the new runs by seed.
# 2 shared CPU cores, 2 jobs at once, 2 threads each, pure PyTorch path.
set -euo pipefail
common=(--data ../shared/data/cifar10_lt_r100.npz --probe ../shared/data/cifar10_probe_100shot.npz
        --class-names airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck
        --encoder small-cnn --image-size 16 --epochs 60 --warmup-epochs 10 --parallel 2 --threads 2)
export TASE_LOSS_DISABLE_EXT=1
python -m tase_loss.experiments "${common[@]}" --methods ntxent,tase-oracle --seeds 0 --output runs/cifar60_repro
python -m tase_loss.experiments "${common[@]}" --methods tase --estimator stable-count --seeds 0,1,2,3,4,5,6,7 \
    --output runs/cifar60_stable
