#!/usr/bin/env bash
# Times the README's main job (`python -m tase_loss.experiments`, the embedded default) and
# appends the wall time to a record, so that the README's figure comes from a command.
#
# usage: scripts/time_main_job.sh [RECORD]   (default docs/results/main_job_time.txt)
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
record="${1:-docs/results/main_job_time.txt}"
output="$(mktemp -d)"
load="$(cut -d' ' -f1 /proc/loadavg)"
started=$(date +%s.%N)
python -m tase_loss.experiments --output "$output" --no-progress > "$output/stdout.txt"
finished=$(date +%s.%N)
seconds=$(python -c "print(f'{$finished - $started:.0f}')")
line="$(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown): ${seconds} s wall, $(nproc) cores, load average before ${load}"
echo "$line" | tee -a "$record"
rm -rf "$output"
