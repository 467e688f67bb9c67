#!/usr/bin/env bash
# The one prepared GPU session (about 9 minutes; a session gets 15 minutes of device time,
# machine start included; what runs past timeout_s is cut, so the sections run in order of
# need): GPU tests first, then the search (its static, graph-replayed and compiled paths have
# never run on a GPU), then issue 12's other figures in order of what is unmeasured.
# Run on the device machine from the repository root, with the wheels in .whl/
# (from ../shared/device-wheels; for mctx, the search machinery's peer, also
# `pip download --no-deps -d .whl mctx chex`: the image has jax):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".whlray",
#       "runs/countdown_compare/warm_start_d_model128_seed0/last.pt"], timeout_s=560)
# The countdown warm start, when carried, is what the search searches with and what expert
# iteration starts from (as in the CPU figures); without it they use random / fresh networks.
# .whlray (optional, for the Ray section): ray 2.60 without its Java jars, as the developers'
# guide says (pip download ... ray==2.60.0 jsonschema ...; zip -d .whlray/ray-*.whl 'ray/jars/*').
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
export PYTHONUNBUFFERED=1
WARM=runs/countdown_compare/warm_start_d_model128_seed0/last.pt
[ -f "$WARM" ] || WARM=""
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== GPU tests (CUDA graph decode, search on CUDA == CPU in fp64, bf16 paths)"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -25
echo "== search: searched vs sampled trace (default; static; static with CUDA graphs, compiled levels, both), simulations/s at L2 d128 and L8 d512, mctx beside (items 1, 2)"
timeout 300 python3 benchmarks/search_speed.py ${WARM:+--checkpoint "$WARM"} 2>&1 | tail -22
echo "== generation: batch 1024, 9-token prompts, 64 new tokens; HF generate beside (item 3)"
timeout 150 python3 benchmarks/throughput.py --no-train --size quickstart --size 25m --size 85m \
  --gen-batch 1024 --new-tokens 64 2>&1 | grep -v "^sample"
echo "== learner: 128 x 250 tokens, eager and compiled, GPT-2 beside (item 4)"
timeout 120 python3 benchmarks/throughput.py --size 25m --size 85m --steps 20 --batch 128 2>&1 | grep -E "^==|train|peer   transformers GPT-2, same"
if ls .whlray/*.whl >/dev/null 2>&1; then
  echo "== Ray, learner on the GPU, 4 trace workers, expert iteration, 60 s (item 5)"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whlray/*.whl
  export PATH=/tmp/site/bin:$PATH RAY_AUTH_MODE=token
  timeout 150 python3 -m emergent train configs/countdown_expert_iteration.yaml runtime=ray device=cuda ray.workers=4 \
    train.time_limit_s=60 improve.init_from=${WARM:-null} eval.problems=100 progress=false logdir="$OUT/ray" run_name=ray4 2>&1 | tail -1
  python3 - "$OUT/ray" <<'PY'
import sys, glob
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(glob.glob(sys.argv[1] + "/*/ray4")[0]); acc.Reload()
for t in ["perf/worker_utilisation", "perf/learner_busy", "perf/data_wait_s", "perf/traces_per_s", "perf/step_s",
          "perf/weight_sync_s", "perf/staleness"]:
    v = [e.value for e in acc.Scalars(t)] if t in acc.Tags()["scalars"] else [float("nan")]
    print(f"{t:26s} median={sorted(v)[len(v)//2]:.4g}  last={v[-1]:.4g}  ({len(v)} windows)")
PY
fi
echo "== what 25M decoding spends its time in (the 25M anomaly)"
timeout 60 python3 benchmarks/throughput.py --no-train --size 25m --gen-batch 1024 --new-tokens 64 --profile 2>&1 | tail -40
