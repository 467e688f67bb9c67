"""Equal compute: a FLOP budget, a warm start's ledger carried over, evaluations against
FLOPs; pass@k (Chen et al.'s unbiased estimator) and majority vote at evaluation."""

import itertools

import numpy as np
import pytest
from conftest import SMALL, TINY, scalars

from emergent import tags
from emergent.platform.checkpoint import load_checkpoint
from emergent.platform.config import load_config
from emergent.platform.local import train_local
from emergent.platform.metrics import majority_at_k, pass_at_k


def test_pass_at_k_equals_enumeration_of_every_k_subset():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                brute = np.mean([any(i < c for i in s) for s in itertools.combinations(range(n), k)])
                assert pass_at_k(np.array([n]), np.array([c]), k)[0] == pytest.approx(brute, abs=1e-12), (n, c, k)
    # vectorised over problems, with the large n of Yue et al. (k up to 256) and no overflow
    got = pass_at_k(np.array([256, 256, 256]), np.array([0, 1, 256]), 64)
    assert got == pytest.approx([0.0, 0.25, 1.0])
    with pytest.raises(ValueError):
        pass_at_k(np.array([4]), np.array([1]), 5)


def test_majority_at_k_votes_over_the_first_k_answers():
    answers = np.array([[7, 7, 3, 3, 3], [1, 2, 2, 1, 5]])
    correct = answers == np.array([[3], [1]])
    assert majority_at_k(answers, correct, 1).tolist() == [0.0, 1.0]
    assert majority_at_k(answers, correct, 3).tolist() == [0.0, 0.0]  # 7 wins 2:1; 2 wins 2:1
    assert majority_at_k(answers, correct, 4).tolist() == [0.0, 1.0]  # ties go to the answer seen first
    assert majority_at_k(answers, correct, 5).tolist() == [1.0, 1.0]  # 3 wins 3:2; 1 ties 2 and is first


def flops_per_step(tmp_path) -> float:
    cfg = load_config(None, [*TINY, "train.steps=1", f"logdir={tmp_path}", "run_name=probe"])
    train_local(cfg)
    return load_checkpoint(cfg.run_dir / "last.pt")["ledger"]["train"]


def test_a_flop_budget_ends_the_run_at_the_step_that_passes_it(tmp_path):
    per_step = flops_per_step(tmp_path)  # a tiny supervised step: batches of one shape cost about the same
    budget = 3.5 * per_step
    cfg = load_config(
        None,
        [
            *TINY,
            "train.steps=1000",
            "eval.every=1000",
            f"train.flop_budget={budget}",
            f"logdir={tmp_path}",
            "run_name=b",
        ],
    )
    final = train_local(cfg)
    ckpt = load_checkpoint(cfg.run_dir / "last.pt")
    step = int(ckpt["step"])
    assert 3 <= step <= 5 and final["step"] == step
    total = sum(ckpt["ledger"].values())
    assert total >= budget  # the last step passed it ...
    logged = scalars(cfg.run_dir)
    before = dict(logged[tags.COMPUTE_TOTAL_FLOPS])
    assert [s for s, _ in logged[tags.eval_tag("test", "exact_match")]] == [0, step]  # ... and was evaluated
    assert before[step] == pytest.approx(total)


def test_a_warm_start_carries_its_ledger_and_evals_are_logged_against_flops(tmp_path):
    sup = load_config(None, [*TINY, "train.steps=3", f"logdir={tmp_path}", "run_name=sup"])
    train_local(sup)
    warm = sum(load_checkpoint(sup.run_dir / "last.pt")["ledger"].values())
    ei = load_config(
        None,
        [
            *SMALL,
            "train.method=expert_iteration",
            "train.steps=2",
            "eval.every=1",
            f"improve.init_from={sup.run_dir / 'last.pt'}",
            f"logdir={tmp_path}",
            "run_name=ei",
        ],
    )
    train_local(ei)
    logged = scalars(ei.run_dir)
    assert logged[tags.compute_tag(tags.WARM_START)][-1][1] == pytest.approx(warm)
    total = logged[tags.COMPUTE_TOTAL_FLOPS][-1][1]
    own = sum(logged[tags.compute_tag(p)][-1][1] for p in (tags.TRAIN, tags.GENERATE, tags.SEARCH, tags.REWARD))
    assert total == pytest.approx(warm + own) and own > 0
    # the same evaluations, with cumulative FLOPs (in tags.VS_FLOPS_UNIT) as the step
    vs = scalars(ei.run_dir / tags.VS_FLOPS_DIR)
    evals = logged[tags.eval_tag("test", "exact_match")]
    against = vs[tags.vs_flops_tag(tags.eval_tag("test", "exact_match"))]
    assert [v for _, v in against] == [v for _, v in evals] and len(evals) == 3
    assert against[0][0] == int(warm / tags.VS_FLOPS_UNIT) and against[-1][0] == int(total / tags.VS_FLOPS_UNIT)


def test_pass_at_k_is_logged_per_split_and_difficulty_and_its_raw_counts_saved(tmp_path):
    cfg = load_config(None, [*TINY, "train.steps=2", "eval.pass_k=[1,2,4]", "eval.splits=[test]", f"logdir={tmp_path}"])
    train_local(cfg)
    logged = scalars(cfg.run_dir)
    for k in (1, 2, 4):
        assert tags.pass_tag("test", k) in logged and tags.maj_tag("test", k) in logged
        assert tags.pass_tag("test", k, difficulty=2) in logged
    p1, p4 = logged[tags.pass_tag("test", 1)][-1][1], logged[tags.pass_tag("test", 4)][-1][1]
    assert 0 <= p1 <= p4 <= 1
    saved = np.load(cfg.run_dir / "evals" / "step_000002.npz")
    correct = saved["test/correct"]  # [P, n]
    assert correct.shape == (cfg.eval.problems, 4) and saved["test/difficulty"].shape == (cfg.eval.problems,)
    assert pass_at_k(np.full(len(correct), 4), correct.sum(1), 4).mean() == pytest.approx(p4, abs=1e-6)
