#!/usr/bin/env bash
# CIFAR-10-LT (JPEG-decoded copy, rho = 100) at 16x16, small CNN, 60 epochs, warm-up 10,
# 8 seeds: NT-Xent vs TASE (then-default estimator: knn-density on backbone features; to rerun
# with today's code add --estimator knn-density, since the default is now stable-count) vs
# tase-oracle (true class frequencies) vs tase-input (one knn-density estimate on the raw
# pixels). 2 shared CPU cores, 2 jobs at once, 1 thread each, pure PyTorch path
# (TASE_LOSS_DISABLE_EXT=1). About 7-8 minutes per run, 32 runs. Every run's training code
# is that of commit 7ac1a22: seeds 3,4 and tase-input 0-2 ran at 42fd5f8, ntxent/tase/oracle
# 0-2 at 96d1df6, seeds 5-7 at eb96fde; those commits change only reporting, merging, the
# budget suite's default list and docs (git diff --stat 7ac1a22 eb96fde -- tase_loss).
set -euo pipefail
common=(--data ../shared/data/cifar10_lt_r100.npz --probe ../shared/data/cifar10_probe_100shot.npz
        --class-names airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck
        --encoder small-cnn --image-size 16 --epochs 60 --warmup-epochs 10 --parallel 2 --threads 2)
export TASE_LOSS_DISABLE_EXT=1
python -m tase_loss.experiments "${common[@]}" --methods ntxent,tase,tase-oracle,tase-input --seeds 3,4 --output runs/cifar60_s34
python -m tase_loss.experiments "${common[@]}" --methods tase-input --seeds 0,1,2 --output runs/cifar60_input
python -m tase_loss.experiments "${common[@]}" --methods ntxent,tase,tase-oracle --seeds 0,1,2 --output runs/cifar60_s012
python -m tase_loss.experiments "${common[@]}" --methods ntxent,tase,tase-oracle,tase-input --seeds 5,6,7 --output runs/cifar60_s567
python -m tase_loss.experiments --merge runs/cifar60_s012/jobs/*/results.json runs/cifar60_s34/jobs/*/results.json \
    runs/cifar60_input/jobs/*/results.json runs/cifar60_s567/jobs/*/results.json --output docs/results/cifar10_lt_cpu60
