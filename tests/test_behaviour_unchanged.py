"""Every method computes what it computed before the one-interface refactor.

``tests/golden/tiny_runs.json`` holds every scalar (``perf/`` aside) that tiny fixed-seed
runs of each method (and the variants that take other code paths) logged with the code
as it was before the refactor. Each run is repeated here and compared, value by value.

Float rounding differs between CPUs and torch builds, and a sampled token can flip on
the last bit, so the comparison is exact only where it can be: the golden file records a
fingerprint of the machine's arithmetic (a seeded model's logits, bit for bit, and the
torch version), and on a machine whose fingerprint differs the test is skipped, saying so.

Re-record (only when a change of behaviour is intended, and say so in the commit):
    python tests/test_behaviour_unchanged.py
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "tiny_runs.json"

BASE = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_len=24", "train.log_every=1",
        "eval.problems=24", "eval.every=2", "eval.batch_size=64", "task.difficulty=[1,2]", "task.extrapolate=[3,3]",
        "optim.warmup_steps=5", "progress=false", "checkpoint_every=1000"]
SELF = ["improve.problems_per_iter=6", "improve.samples=3", "reward.init=scratch", "reward.n_layer=1",
        "reward.d_model=32", "reward.n_head=2", "train.steps=4"]
# search.kv_cache=false: the recorded runs predate the per-node key cache; the cached path is
# checked against this reference in tests/test_search.py (equal trees in fp64)
SEARCH = ["search.num_simulations=4", "search.leaves_per_call=2", "search.top_k=4", "search.kv_cache=false"]
ADDED_SINCE = {"compute/warm_start_flops"}
VARIANTS = {
    "supervised": ["train.batch_size=16", "train.steps=6"],
    "supervised_curriculum": ["train.batch_size=16", "train.steps=6", "train.curriculum=0.1",
                              "train.curriculum_window=16"],
    "expert_iteration": ["train.method=expert_iteration", *SELF, "improve.updates_per_iter=2"],
    "expert_iteration_vote": ["train.method=expert_iteration", *SELF, "improve.label_source=majority_vote"],
    "expert_iteration_reward_net": ["train.method=expert_iteration", *SELF, "improve.label_source=reward_net",
                                    "reward.init=policy", "reward.n_layer=null", "reward.d_model=null",
                                    "reward.n_head=null"],
    "policy_gradient": ["train.method=policy_gradient", *SELF],
    "policy_gradient_value_kl": ["train.method=policy_gradient", *SELF, "improve.baseline=value",
                                 "improve.kl_coef=0.05", "improve.updates_per_iter=2"],
    "alphazero": ["train.method=alphazero", "improve.problems_per_iter=6", "reward.init=scratch", "reward.n_layer=1",
                  "reward.d_model=32", "reward.n_head=2", "train.steps=4", *SEARCH, "improve.updates_per_iter=2"],
    "alphazero_completed_q": ["train.method=alphazero", "improve.problems_per_iter=6", "reward.init=scratch",
                              "reward.n_layer=1", "reward.d_model=32", "reward.n_head=2", "train.steps=4", *SEARCH,
                              "search.policy_target=completed_q", "search.dirichlet_fraction=0.25",
                              "search.confident_prior=0.9"],
}


def fingerprint() -> str:
    """The torch version and a hash of a seeded model's logits: equal where arithmetic is."""
    from emergent.agents.model import ModelConfig, TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(n_layer=1, n_head=2, d_model=32, max_len=24), 16).eval()
    with torch.no_grad():
        logits = model(torch.arange(16 * 12).remainder(16).view(16, 12))
    return f"{torch.__version__}:{hashlib.sha256(logits.numpy().tobytes()).hexdigest()[:16]}"


def scalars_of(variant: str, logdir: str) -> dict[str, list[list[float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from emergent.platform.config import load_config
    from emergent.platform.local import train_local

    torch.set_num_threads(1)  # thread count can change float reductions
    cfg = load_config(None, [*BASE, *VARIANTS[variant], f"logdir={logdir}", f"run_name={variant}"])
    train_local(cfg)
    acc = EventAccumulator(str(cfg.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in sorted(acc.Tags()["scalars"])
            if not t.startswith("perf/")}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_runs_log_what_they_logged_before(variant, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    if golden["fingerprint"] != fingerprint():
        pytest.skip(f"recorded on a machine with other arithmetic ({golden['fingerprint']} != {fingerprint()})")
    expected = golden["runs"][variant]
    got = scalars_of(variant, str(tmp_path))
    assert set(expected) <= set(got), set(expected) - set(got)
    # tags added since the recording, each by a change that says so: a warm start's ledger
    # part (0 in these runs: none starts from a checkpoint)
    added = {t: s for t, s in got.items() if t not in expected}
    assert set(added) <= ADDED_SINCE, set(added) - ADDED_SINCE
    assert all(v == 0 for series in added.values() for _, v in series)
    for tag, series in expected.items():
        # float32 event values; sums of FLOPs may add their parts in another order
        assert [s for s, _ in got[tag]] == [s for s, _ in series], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in series], rel=1e-6, abs=1e-9), tag


if __name__ == "__main__":  # records with whichever emergent is imported (the checkout, once installed)
    runs = {}
    with tempfile.TemporaryDirectory() as d:
        for v in VARIANTS:
            runs[v] = scalars_of(v, d)
            print(v, len(runs[v]), "tags", flush=True)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"fingerprint": fingerprint(), "runs": runs}, indent=0, sort_keys=True))
    print("wrote", GOLDEN)
