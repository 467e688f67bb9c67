#!/usr/bin/env bash
# The one prepared GPU session: GPU tests, the quickstart in bf16, throughput figures.
# Run on the device machine from the repository root with the wheels in .whl/ (for the mctx
# peer of the search benchmark add: pip download --no-deps -d .whl mctx chex; the image has jax).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== GPU tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_model.py tests/test_search.py 2>&1 | tail -4
echo "== quickstart on CUDA (bf16 autocast, fused AdamW)"
start=$(date +%s.%N)
timeout 300 python3 -m emergent train device=cuda progress=false logdir="$OUT/runs" 2>&1 | tail -2
end=$(date +%s.%N)
echo "quickstart wall: $(python3 -c "print(round($end-$start,1))") s"
python3 - "$OUT/runs" <<'PY'
import sys, glob
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(glob.glob(sys.argv[1] + "/quickstart/*")[0]); acc.Reload()
for t in ["eval/test/exact_match", "eval/test/d3/exact_match", "perf/tokens_per_s", "perf/mfu", "perf/step_s", "perf/eval_s"]:
    v = [e.value for e in acc.Scalars(t)]
    print(f"{t:28s} last={v[-1]:.4g}  median={sorted(v)[len(v)//2]:.4g}")
PY
echo "== throughput"
timeout 420 python3 benchmarks/throughput.py --size quickstart --size medium --size large --steps 20 --batch 128 2>&1 | tail -20
echo "== search (mctx joins as the peer when its wheel and chex's are in .whl: the image has jax)"
timeout 300 python3 benchmarks/search_speed.py 2>&1 | tail -12
