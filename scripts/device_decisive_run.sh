#!/usr/bin/env bash
# The GPU checks and the decisive CIFAR-10-LT run (docs/experiments.md, "The decisive run")
# on a lent GPU, from one prepared script; `--dry-run` runs every step on the CPU at a tiny
# size (tests/test_entry_points.py does, so the script cannot rot while no GPU is lent).
#
# usage: bash scripts/device_decisive_run.sh [--dry-run] [--stage smoke|main|all] [BUDGET_MINUTES]
#
# Stages (default all):
#   smoke  the fused op: build the extension in place (CPU + CUDA where torch has CUDA, as
#          CI builds it), its op tests with the extension required (tests/test_ops.py: CUDA parity under
#          float32 / bf16 / fp16, gradients), then fused vs reference vs chunked vs plain,
#          time and peak memory (benchmarks/bench_fused.py);
#   main   the runner: epoch time, syncs per step and 4 runs at once
#          (benchmarks/bench_runner.py), then the suite: every method the same epochs
#          within BUDGET_MINUTES (default 8), 2 seeds, 4 jobs at once.
#
# Each step's output is teed to OUT/<step>.log and its status and seconds to
# OUT/steps.log; a failed step does not stop the later ones, the exit status says whether
# any failed. OUT is $OUT (the device tool brings it back), else device_output/ (a fresh
# temporary folder with --dry-run). The dry run works in a temporary copy of the
# repository's files and writes nothing into the repository; on the GPU the extension is
# built into the working tree the device tool copied.
#
# On the GPU the data and the FAISS wheel come with the command (carry [".data", ".whl"]);
# prepare them here first:
#
#   echo /.data/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude
#   mkdir -p .data && cp ../shared/data/cifar10_lt_jpeg_pack.npz ../shared/data/jpeg_pack.py .data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl faiss-cpu==1.15.1
#
# The dry run makes its own tiny CIFAR-shaped long-tailed .npz files instead, needs no GPU,
# no data folder and no network, and takes about 4.5 minutes on 2 cores (the suite's budget
# is 3 minutes, timing included: at 1.5 a machine busy with two training jobs measured
# 7 s per tiny epoch and fitted none).
set -euo pipefail

dry_run=0
stage=all
budget_minutes=8
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --stage) stage="${2:?--stage needs smoke, main or all}"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "device_decisive_run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) budget_minutes="$1" ;;
    esac
    shift
done
case "$stage" in smoke|main|all) ;; *) echo "device_decisive_run.sh: --stage must be smoke, main or all, got $stage" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
if [ "$dry_run" = 1 ]; then
    out="${OUT:-$(mktemp -d)}"
else
    out="${OUT:-device_output}"
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ "$dry_run" = 1 ]; then
    # The files git would commit (tracked, or untracked and not ignored), no build outputs.
    mkdir "$scratch/repo"
    if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
        git ls-files -z -co --exclude-standard | while IFS= read -r -d '' name; do
            if [ -f "$name" ]; then printf '%s\0' "$name"; fi  # not the deleted ones
        done | tar --null -T - -cf - | tar -xf - -C "$scratch/repo"
    else
        tar --exclude=./build --exclude='*.so' -cf - . | tar -xf - -C "$scratch/repo"
    fi
    cd "$scratch/repo"
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

failed=()
step() {  # step NAME COMMAND...: run it, tee OUT/NAME.log, record status and seconds
    local name="$1" started=$SECONDS status=ok
    shift
    echo "== $name: $*" | tee -a "$out/steps.log"
    if ! "$@" 2>&1 | tee "$out/$name.log"; then
        status=FAILED
        failed+=("$name")
    fi
    echo "== $name: $status in $((SECONDS - started)) s" | tee -a "$out/steps.log"
}

if [ "$dry_run" = 1 ]; then
    device=cpu
    data="$out/data"
    # CPU only: a CUDA build would need nvcc and minutes, and nothing here could run it.
    export TASE_LOSS_BUILD_CUDA=0
    step data "$py" - "$data" <<'EOF'
import sys
from pathlib import Path

import numpy as np

# CIFAR-shaped (N, 32, 32, 3) uint8, 10 classes, ratio 10: what the GPU run decodes, tiny.
folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
generator = np.random.default_rng(0)
counts = [int(40 * 10 ** (-label / 9)) for label in range(10)]
labels = np.repeat(np.arange(10), counts)
balanced = np.repeat(np.arange(10), 10)
images = lambda count: generator.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
np.savez(folder / "cifar10_lt_r100.npz", x=images(labels.size), y=labels, x_test=images(100), y_test=balanced)
np.savez(folder / "cifar10_probe_100shot.npz", x=images(100), y=balanced)
print(f"tiny CIFAR-10-LT in {folder}: class counts {counts}")
EOF
else
    device=cuda
    data=.data
    if compgen -G ".whl/*.whl" > /dev/null; then
        step faiss-wheel "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$scratch/site" .whl/*.whl
        export PYTHONPATH="$scratch/site:$PYTHONPATH"
    fi
    step data "$py" .data/jpeg_pack.py .data/cifar10_lt_jpeg_pack.npz .data
    step gpu nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi

if [ "$stage" != main ]; then
    # 1. The fused op: build, which path the dispatch takes, the op tests, time and memory.
    # The smoke steps require the extension; the main steps run with whatever loads.
    step build-extension env TASE_LOSS_BUILD_EXT=1 "$py" setup.py -q build_ext --inplace
    step extension env TASE_LOSS_REQUIRE_EXT=1 "$py" -c "
import torch
from tase_loss.ops import backend_info
print(torch.__version__, 'CUDA', torch.version.cuda, '- available:', torch.cuda.is_available())
for rows in (4096, 65536):
    print(rows, 'x', rows, backend_info(rows, rows, '$device'))
"
    if [ "$dry_run" = 1 ]; then
        step op-tests env TASE_LOSS_REQUIRE_EXT=1 "$py" -m pytest tests/test_ops.py -q -p no:cacheprovider \
            -m "not slow"
        step bench-fused env TASE_LOSS_REQUIRE_EXT=1 "$py" benchmarks/bench_fused.py --device cpu --rows 256 --rounds 1 \
            --memory-rows 256 --moco-queue 256 --json "$out/bench_fused.json"
    else
        step op-tests env TASE_LOSS_REQUIRE_EXT=1 "$py" -m pytest tests/test_ops.py -q -p no:cacheprovider -rs
        step bench-fused env TASE_LOSS_REQUIRE_EXT=1 "$py" benchmarks/bench_fused.py --device cuda --dtype bfloat16 --rows 16384 \
            --rounds 5 --memory-rows 16384 65536 262144 --json "$out/bench_fused.json"
    fi
fi

if [ "$stage" != smoke ]; then
    # 2. Epoch time, syncs per step and parallel throughput of the device-resident path.
    if [ "$dry_run" = 1 ]; then
        step bench-runner "$py" benchmarks/bench_runner.py --device cpu --encoder tiny-cnn --batch-size 32 \
            --data "$data/cifar10_lt_r100.npz" --methods ntxent,tase --epochs 2 --precision fp32 --parallel 2 \
            --output "$out/bench_runner.json"
    else
        step bench-runner "$py" benchmarks/bench_runner.py --device cuda --encoder resnet18 --batch-size 512 \
            --data "$data/cifar10_lt_r100.npz" --methods ntxent,tase --epochs 3 --compile --parallel 4 \
            --output "$out/bench_runner.json"
    fi
    # 3. The suite: every method the same epochs within the budget.
    if [ "$dry_run" = 1 ]; then
        size=(--encoder tiny-cnn --batch-size 32 --seeds 0 --budget-minutes 3 --min-epochs 1 --parallel 2)
    else
        size=(--encoder resnet18 --optimizer sgd --lr 0.5 --batch-size 512 --compile --seeds 0,1
              --budget-minutes "$budget_minutes" --parallel 4)
    fi
    step decisive "$py" -m tase_loss.experiments --data "$data/cifar10_lt_r100.npz" \
        --probe "$data/cifar10_probe_100shot.npz" \
        --class-names airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck \
        --methods ntxent,tase,tase-oracle,tase-input,ts,rwsam "${size[@]}" --no-checkpoints \
        --device "$device" --output "$out/decisive"
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed steps: ${failed[*]} (logs in $out)" | tee -a "$out/steps.log"
    exit 1
fi
echo "every step passed (logs in $out)" | tee -a "$out/steps.log"
