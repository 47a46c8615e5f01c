#!/usr/bin/env bash
# Superseded by ../cifar10_lt_cpu60_stable/ (stable-count as it ships, commit 778c1a8); kept as measured.
# Issue 22's learning check. CIFAR-10-LT (JPEG-decoded copy, rho = 100) at 16x16, small CNN,
# 60 epochs, warm-up 10, 8 seeds, the settings of docs/results/cifar10_lt_cpu60/commands.sh:
# NT-Xent, TASE with the stable-count estimator, and tase-oracle (true class frequencies),
# every run with the training code of commit a083757 (run from a worktree of it, so that
# later edits could not reach a running job). The earlier runs of ntxent/tase-oracle (code of
# 7ac1a22) are not reused: rerun at a083757, seed 0's loss differs from the old run's in the
# fourth digit from epoch 1 on (the op refactor changed rounding), so the old runs do not
# pair with new ones at one commit. 2 shared CPU cores, 2 jobs at once, pure PyTorch path.
# Correction (stop 37): "--parallel 2 --threads 2" gives each job max(1, 2 // 2) = 1 thread
# (every command in results.json says --threads 1), not 2 as this header said; and the
# difference from 7ac1a22 is the machine's rounding, not the op refactor: seed 0's epoch-1
# loss here, 4.888078, is what an AMD EPYC gives with 1 thread at ad4bf28 and at 4335c0c.
set -euo pipefail
common=(--data ../shared/data/cifar10_lt_r100.npz --probe ../shared/data/cifar10_probe_100shot.npz
        --class-names airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck
        --encoder small-cnn --image-size 16 --epochs 60 --warmup-epochs 10 --parallel 2 --threads 2)
export TASE_LOSS_DISABLE_EXT=1
python -m tase_loss.experiments "${common[@]}" --methods ntxent,tase-oracle --seeds 0 --output runs/cifar60_repro
python -m tase_loss.experiments "${common[@]}" --methods tase --estimator stable-count --seeds 0,1,2,3,4,5,6,7 \
    --output runs/cifar60_stable
python -m tase_loss.experiments "${common[@]}" --methods ntxent,tase-oracle --seeds 1,2,3,4,5,6,7 \
    --output runs/cifar60_baselines
python -m tase_loss.experiments --merge runs/cifar60_repro/jobs/*/results.json runs/cifar60_stable/jobs/*/results.json \
    runs/cifar60_baselines/jobs/*/results.json --output docs/results/cifar10_lt_cpu60_stable_a083757
