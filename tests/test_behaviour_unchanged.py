"""Every method computes what it computed when the goldens were recorded.

``tests/golden/tiny_runs.json`` holds every scalar (``perf/`` aside) that tiny fixed-seed
runs of each method (and the variants that take other code paths) logged. Each run is
repeated here and compared, value by value, on any CPU.

The runs compute in float64 (``torch.set_default_dtype``; ``upcast`` leaves fp64 alone).
In float32, CPUs differ in the last bits (AVX-512, AVX2 and plain kernels, MKL's code
paths), and a sampled token that flips on the last bit sends a run elsewhere: the old
fp32 goldens could only run on the machine that recorded them. In float64 the same
differences are ~1e-16 relative, so a sampled token flips with probability ~1e-13 per
draw, and the values (stored as float32 in the event files) agree to rel 1e-6; on this
project's machine the runs under ATEN_CPU_CAPABILITY=avx512, avx2 and default are bit
for bit equal. A real change of behaviour (a learning rate 0.1 % off, a loss term, a
sampling rule) moves losses and accuracies by far more than 1e-6 and fails.

Re-record (only when a change of behaviour is intended, and say so in the commit):
    python tests/test_behaviour_unchanged.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "tiny_runs.json"

BASE = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.d_model=32",
    "model.max_len=24",
    "train.log_every=1",
    "eval.problems=24",
    "eval.every=2",
    "eval.batch_size=64",
    "task.difficulty=[1,2]",
    "task.extrapolate=[3,3]",
    "optim.warmup_steps=5",
    "progress=false",
    "checkpoint_every=1000",
]
SELF = [
    "improve.problems_per_iter=6",
    "improve.samples=3",
    "reward.init=scratch",
    "reward.n_layer=1",
    "reward.d_model=32",
    "reward.n_head=2",
    "train.steps=4",
]
# search.kv_cache=false: the recorded runs predate the per-node key cache; the cached path is
# checked against this reference in tests/test_search.py (equal trees in fp64)
SEARCH = ["search.num_simulations=4", "search.leaves_per_call=2", "search.top_k=4", "search.kv_cache=false"]
VARIANTS = {
    "supervised": ["train.batch_size=16", "train.steps=6"],
    "supervised_curriculum": [
        "train.batch_size=16",
        "train.steps=6",
        "train.curriculum=0.1",
        "train.curriculum_window=16",
    ],
    "expert_iteration": ["train.method=expert_iteration", *SELF, "improve.updates_per_iter=2"],
    "expert_iteration_vote": ["train.method=expert_iteration", *SELF, "improve.label_source=majority_vote"],
    "expert_iteration_reward_net": [
        "train.method=expert_iteration",
        *SELF,
        "improve.label_source=reward_net",
        "reward.init=policy",
        "reward.n_layer=null",
        "reward.d_model=null",
        "reward.n_head=null",
    ],
    "policy_gradient": ["train.method=policy_gradient", *SELF],
    "policy_gradient_value_kl": [
        "train.method=policy_gradient",
        *SELF,
        "improve.baseline=value",
        "improve.kl_coef=0.05",
        "improve.updates_per_iter=2",
    ],
    "alphazero": [
        "train.method=alphazero",
        "improve.problems_per_iter=6",
        "reward.init=scratch",
        "reward.n_layer=1",
        "reward.d_model=32",
        "reward.n_head=2",
        "train.steps=4",
        *SEARCH,
        "improve.updates_per_iter=2",
        "improve.learn_from=all",
    ],
    "alphazero_completed_q": [
        "train.method=alphazero",
        "improve.problems_per_iter=6",
        "reward.init=scratch",
        "reward.n_layer=1",
        "reward.d_model=32",
        "reward.n_head=2",
        "train.steps=4",
        *SEARCH,
        "search.policy_target=completed_q",
        "search.dirichlet_fraction=0.25",
        "search.confident_prior=0.9",
        "improve.learn_from=all",
    ],
    # the search as the expert: a Gumbel root, rollout-valued leaves, expert targets, sampling first
    "alphazero_expert": [
        "train.method=alphazero",
        "improve.problems_per_iter=6",
        "reward.init=scratch",
        "reward.n_layer=1",
        "reward.d_model=32",
        "reward.n_head=2",
        "train.steps=4",
        *SEARCH,
        "search.root=gumbel",
        "search.leaf_value=mix",
        "improve.sample_first=2",
        "search.tree_traces=8",
        "improve.updates_per_iter=2",
    ],
}


def scalars_of(variant: str, logdir: str) -> dict[str, list[list[float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from emergent.platform.config import load_config
    from emergent.platform.local import train_local

    torch.set_num_threads(1)  # thread count can change float reductions
    cfg = load_config(None, [*BASE, *VARIANTS[variant], f"logdir={logdir}", f"run_name={variant}"])
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # every network, tensor and loss of the run in fp64
    try:
        train_local(cfg)
    finally:
        torch.set_default_dtype(dtype)
    acc = EventAccumulator(str(cfg.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        t: [[e.step, e.value] for e in acc.Scalars(t)]
        for t in sorted(acc.Tags()["scalars"])
        if not t.startswith("perf/")
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_runs_log_what_they_logged_before(variant, tmp_path):
    expected = json.loads(GOLDEN.read_text())["runs"][variant]
    got = scalars_of(variant, str(tmp_path))
    assert set(got) == set(expected), (set(expected) - set(got), set(got) - set(expected))
    for tag, series in expected.items():
        # float32 event values of fp64 runs; sums of FLOPs may add their parts in another order
        assert [s for s, _ in got[tag]] == [s for s, _ in series], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in series], rel=1e-6, abs=1e-9), tag


if __name__ == "__main__":  # records with whichever emergent is imported (the checkout, once installed)
    runs = {}
    with tempfile.TemporaryDirectory() as d:
        for v in VARIANTS:
            runs[v] = scalars_of(v, d)
            print(v, len(runs[v]), "tags", flush=True)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(
        json.dumps({"dtype": "float64", "torch": torch.__version__, "runs": runs}, indent=0, sort_keys=True)
    )
    print("wrote", GOLDEN)
