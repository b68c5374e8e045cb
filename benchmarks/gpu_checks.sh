#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, on a machine where mpinn[dev], CuPy and PyTorch are
# installed:  bash benchmarks/gpu_checks.sh [tests|job|bench|all] (default: all)
# Logs go to $OUT (or ./gpu-checks): gpu.txt, pytest.log, job.log, bench.log.
set -u -o pipefail
out=${OUT:-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
stage=${1:-all}
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
timeout 120 mpirun -n 2 mpinn info 2>&1 | tee -a "$out/gpu.txt"

if [[ $stage == tests || $stage == all ]]; then
    # every test, the cupy parametrizations and the NumPy-vs-CuPy comparisons included
    timeout 540 python -m pytest -q -p no:cacheprovider -rs 2>&1 | tee "$out/pytest.log" \
        || status=1
fi
if [[ $stage == job || $stage == all ]]; then
    timeout 300 mpirun -n 2 mpinn train --set model.backend=cupy \
        --set "run.directory=$out/run" 2>&1 | tee "$out/job.log" || status=1
fi
if [[ $stage == bench || $stage == all ]]; then
    timeout 400 python benchmarks/bench_backend.py --backend cupy --repeats 7 2>&1 \
        | tee "$out/bench.log" || status=1
fi
exit $status
