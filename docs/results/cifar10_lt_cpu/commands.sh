#!/usr/bin/env bash
# The CIFAR-10-LT CPU sweep of docs/results.md, exactly as run (2 busy CPU cores, no GPU).
# One job per seed (each: NT-Xent then TASE), run in parallel, one thread each, niced.
# Seed 0's first two epochs ran in an earlier job with the same settings and were resumed
# from its checkpoints with --resume (resume is bit-exact, see tests/test_experiments.py).
set -e
DATA=../shared/data    # the shared/data folder beside the repository
for seed in 0 1 2; do
  nice -n 5 python -m tase_loss.experiments --data $DATA/cifar10_lt_r100.npz \
      --probe $DATA/cifar10_probe_100shot.npz --encoder small-cnn --epochs 6 --warmup-epochs 2 \
      --losses ntxent,tase --seeds $seed --threads 1 --checkpoint-every 1 --resume \
      --output runs/cifar10_lt_seed$seed &
done
wait
# The oracle upper bound (true class frequencies instead of k-means estimates):
for seed in 0 1 2; do
  nice -n 5 python -m tase_loss.experiments --data $DATA/cifar10_lt_r100.npz \
      --probe $DATA/cifar10_probe_100shot.npz --encoder small-cnn --epochs 6 --warmup-epochs 2 \
      --losses tase-oracle --seeds $seed --threads 1 --checkpoint-every 1 \
      --output runs/cifar10_lt_oracle_seed$seed &   # seed 0 ran as --output runs/cifar10_lt_oracle
done
wait
python -m tase_loss.experiments --merge runs/cifar10_lt_seed{0,1,2}/results.json \
    runs/cifar10_lt_oracle/results.json runs/cifar10_lt_oracle_seed{1,2}/results.json \
    --output docs/results/cifar10_lt_cpu
# Pseudo-label quality of the trained encoders:
python studies/pseudo_label_quality.py --data $DATA/cifar10_lt_r100.npz --encoder small-cnn \
    --checkpoints runs/cifar10_lt_seed0/checkpoints/*.pt \
    --output docs/results/cifar10_lt_cpu/pseudo_label_quality_seed0.json
# One longer TASE run (idle machine, 2 threads) and its pseudo-label quality:
python -m tase_loss.experiments --data $DATA/cifar10_lt_r100.npz \
    --probe $DATA/cifar10_probe_100shot.npz --encoder small-cnn --epochs 20 --warmup-epochs 2 \
    --losses tase --seeds 0 --threads 2 --checkpoint-every 1 --output runs/cifar10_lt_tase20
python studies/pseudo_label_quality.py --data $DATA/cifar10_lt_r100.npz --encoder small-cnn \
    --checkpoints runs/cifar10_lt_tase20/checkpoints/tase_seed0.pt \
    --output docs/results/cifar10_lt_cpu/pseudo_label_quality_tase20.json
