#!/usr/bin/env bash
# The GPU check of the step benchmark, for a machine with a CUDA device and torch but neither Ray nor Optuna:
# `rfgan bench` on the three bench presets, the figures as JSON under $OUT (default: ./gpu-check), and a profiler
# table of rfgan's step for `reference`. About 3 minutes on one H200. Run from the repository root:
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
for preset in reference medium tiny; do
    # One preset failing or running out of time must not cost the others' figures (device time is scarce).
    timeout 150 $PY -m rfgan bench --preset "$preset" --device cuda --json 2>&1 | tee "$OUT/bench-$preset.txt" ||
        echo "bench $preset: exit $? (124: over its 150 s)" | tee -a "$OUT/bench-$preset.txt"
done
timeout 100 $PY -c "from rfgan.bench.step import profile_table; print(profile_table('reference', 'cuda', rows=30))" \
    > "$OUT/profile-reference.txt" 2>&1 || true
echo "figures in $OUT"
