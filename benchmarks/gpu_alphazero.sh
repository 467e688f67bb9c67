#!/usr/bin/env bash
# Issue 12 item 6 on one GPU, as one prepared device run (about 7 minutes): from the
# 4,000-gold countdown warm start, does the committed alphazero config raise greedy test
# exact match by >= 8 points within 5 minutes? Three seeds run side by side on the one card
# (small models: they share it), beside three of improve.learn_from=solved (maximum likelihood
# of the accepted searched traces, at expert iteration's lr) and one expert-iteration run, the
# reference.
#   run(command="bash benchmarks/gpu_alphazero.sh", carry=[".whl"], timeout_s=560)
# The warm start is trained first (about 40 s on an H100) unless runs/countdown/ is carried.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
WARM=runs/countdown/supervised_L2_d128_learned_s0/last.pt
if [ ! -f "$WARM" ]; then
  start=$(date +%s)
  timeout 200 python3 -m emergent train configs/countdown.yaml device=cuda progress=false 2>&1 | tail -1
  echo "warm start: $(( $(date +%s) - start )) s"
fi
for s in 0 1 2; do
  timeout 420 python3 -m emergent train configs/countdown_alphazero.yaml device=cuda seed=$s train.time_limit_s=300 \
    train.steps=100000 progress=false logdir="$OUT/runs" run_name=alphazero_s$s > "$OUT/alphazero_s$s.log" 2>&1 &
  timeout 420 python3 -m emergent train configs/countdown_alphazero.yaml device=cuda seed=$s train.time_limit_s=300 \
    train.steps=100000 improve.learn_from=solved optim.lr=3e-4 optim.min_lr=3e-4 progress=false logdir="$OUT/runs" \
    run_name=alphazero_solved_s$s > "$OUT/alphazero_solved_s$s.log" 2>&1 &
done
timeout 420 python3 -m emergent train configs/countdown_expert_iteration.yaml device=cuda seed=0 train.time_limit_s=300 \
  train.steps=100000 progress=false logdir="$OUT/runs" run_name=expert_iteration_s0 > "$OUT/expert_iteration_s0.log" 2>&1 &
wait
python3 - "$OUT/runs/countdown" <<'PY'
import sys, glob, os
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
gains = {}
for run in sorted(glob.glob(sys.argv[1] + "/*")):
    if os.path.basename(run) == "vs_flops":
        continue
    acc = EventAccumulator(run); acc.Reload()
    em = [(e.step, e.value) for e in acc.Scalars("eval/test/exact_match")]
    it = [e.value for e in acc.Scalars("perf/elapsed_s")] if "perf/elapsed_s" in acc.Tags()["scalars"] else []
    name = os.path.basename(run)
    gains.setdefault(name.rsplit("_s", 1)[0], []).append(100 * (em[-1][1] - em[0][1]))
    print(f"{name:22s} test EM {em[0][1]:.3f} -> {em[-1][1]:.3f} at iteration {em[-1][0]}"
          f" ({it[-1]:.0f} s)" if it else "")
for method, g in gains.items():
    print(f"{method}: gain {sum(g) / len(g):+.1f} points (range {min(g):+.1f} .. {max(g):+.1f}, {len(g)} seeds)")
PY
