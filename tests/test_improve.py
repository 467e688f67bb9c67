"""Self-improvement: no gold access, the FLOP ledger, determinism, the learning signal."""
import numpy as np
import pytest
import torch

from conftest import TINY
from emergent.agents.improve import encode_values, majority_labels
from emergent.platform import tags
from emergent.platform.config import load_config
from emergent.platform.local import Experiment, Oracle, train_local

SELF_IMPROVEMENT = ["expert_iteration", "policy_gradient", "alphazero"]
SMALL = [*TINY, "improve.problems_per_iter=6", "improve.samples=3", "search.num_simulations=4",
         "search.leaves_per_call=2", "search.top_k=4", "reward.n_layer=1", "reward.d_model=32", "reward.n_head=2", "reward.init=scratch",
         "eval.problems=12"]


def test_majority_labels():
    rows = np.array([0, 0, 0, 1, 1])
    comps = ["x>12", "y>12", "z>7", "a>3", "b>4"]
    assert majority_labels(rows, comps).tolist() == [1, 1, 0, 1, 0]


def test_encode_values_marks_states_from_prompt_end_to_eos():
    from emergent.envs import TOKENIZER

    b = encode_values(["1+1=", "12+3="], ["2", "51"], np.array([1, 0]), max_len=16)
    assert TOKENIZER.decode(b.inputs[1][b.mask[1].bool()]) == "=51$"
    # a trace that filled the context has no EOS to score: its last token is the final state
    b = encode_values(["1+1="], ["2" * 11], np.array([0]), max_len=16)
    assert b.inputs.shape[1] == 16 and TOKENIZER.decode(b.inputs[0][b.mask[0].bool()])[-1] == "2"


class RaisingOracle(Oracle):
    def __call__(self, rows, completions):
        raise AssertionError("the verifier was called on a training problem")


def test_majority_vote_never_calls_the_verifier(tmp_path, monkeypatch):
    import emergent.platform.local as local

    monkeypatch.setattr(local, "Oracle", RaisingOracle)
    cfg = load_config(None, [*SMALL, "train.method=expert_iteration", "improve.label_source=majority_vote",
                             "train.steps=3", f"logdir={tmp_path}"])
    train_local(cfg)  # would raise if any training problem's verifier were consulted
    cfg = load_config(None, [*SMALL, "train.method=expert_iteration", "improve.label_source=verifier",
                             "train.steps=1", f"logdir={tmp_path}", "run_name=v"])
    with pytest.raises(AssertionError, match="verifier was called"):
        train_local(cfg)  # and the same guard does fire when the verifier is used


def test_learners_never_receive_problems_only_prompts(tmp_path, monkeypatch):
    seen = []
    cfg = load_config(None, [*SMALL, "train.method=policy_gradient", "train.steps=1", f"logdir={tmp_path}"])
    exp = Experiment(cfg)
    original = exp.learner.collect

    def spy(prompts, verifier):
        seen.append(prompts)
        return original(prompts, verifier)

    monkeypatch.setattr(exp.learner, "collect", spy)
    exp.train_step()
    assert seen and all(isinstance(p, str) and p.endswith("=") for p in seen[0])


def test_supervised_ledger_matches_the_analytic_count(tmp_path):
    """compute/total_flops of a supervised run = 6 N tokens + 12 L d T tokens, within 5 %.

    N counts every parameter (embeddings, norms); the ledger counts the matmuls that run.
    At the quickstart's size the two agree to < 1 %; at toy widths embeddings dominate N.
    """
    cfg = load_config(None, [*TINY, "model.n_layer=2", "model.d_model=128", "model.n_head=4", "model.max_len=64",
                             "train.steps=6", f"logdir={tmp_path}"])
    exp = Experiment(cfg)
    tokens_at = []
    update = exp.learner.update

    def counting(batch, **kw):
        tokens_at.append(batch.inputs.shape)
        return update(batch, **kw)

    exp.learner.update = counting
    for _ in range(6):
        exp.train_step()
    N = exp.model.num_params()
    L, d = cfg.model.n_layer, cfg.model.d_model
    analytic = sum(B * T * (6 * N + 12 * L * d * T) for B, T in tokens_at)
    assert exp.ledger.total == pytest.approx(analytic, rel=0.05)
    assert exp.ledger.parts["train"] == exp.ledger.total


@pytest.mark.parametrize("method", SELF_IMPROVEMENT)
def test_same_seed_same_metrics_and_a_full_ledger(method, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series = []
    for name in ("a", "b"):
        cfg = load_config(None, [*SMALL, f"train.method={method}", "train.steps=4", "train.log_every=2",
                                 "eval.every=2", f"logdir={tmp_path}", f"run_name={name}"])
        train_local(cfg)
        acc = EventAccumulator(str(cfg.run_dir))
        acc.Reload()
        series.append({t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]
                       if not t.startswith("perf/")})
    assert series[0] == series[1]
    s = series[0]
    assert {tags.COMPUTE_TOTAL_FLOPS, tags.eval_tag("test", "exact_match"), "train/sample_accuracy"} <= set(s)
    part = "compute/search_flops" if method == "alphazero" else "compute/generate_flops"
    assert s[part][-1][1] > 0 and s["compute/reward_flops"][-1][1] > 0
    total = s[tags.COMPUTE_TOTAL_FLOPS][-1][1]
    parts = sum(s[f"compute/{p}_flops"][-1][1] for p in ("train", "generate", "search", "reward"))
    assert total == pytest.approx(parts)


def test_init_from_a_supervised_checkpoint(tmp_path):
    sup = load_config(None, [*TINY, "train.steps=3", f"logdir={tmp_path}", "run_name=sup"])
    train_local(sup)
    ckpt = sup.run_dir / "last.pt"
    cfg = load_config(None, [*SMALL, "train.method=expert_iteration", f"improve.init_from={ckpt}",
                             f"logdir={tmp_path}", "run_name=ei"])
    exp = Experiment(cfg)
    state = torch.load(ckpt, weights_only=True)
    for k, v in state["model"].items():
        assert torch.equal(exp.model.state_dict()[k], v)


@pytest.mark.parametrize("method", ["expert_iteration", "alphazero"])
def test_resume_restores_reward_net_and_replay(method, tmp_path):
    base = [*SMALL, f"train.method={method}", f"logdir={tmp_path}"]
    cfg = load_config(None, [*base, "train.steps=2"])
    train_local(cfg)
    state = torch.load(cfg.run_dir / "last.pt", weights_only=True)  # the safe loader reads it all
    replay = state["learner"]["kept" if method == "expert_iteration" else "replay"]
    resumed = Experiment(load_config(None, [*base, "train.steps=3", "resume=true"]))
    from emergent.platform.local import try_resume

    assert try_resume(resumed) and resumed.step == 2
    for k, v in state["learner"]["reward_net"].items():
        assert torch.equal(resumed.reward_net.state_dict()[k], v)
    kept = resumed.learner.kept if method == "expert_iteration" else resumed.learner.replay
    assert len(kept) == len(replay)


def test_reward_net_starts_from_the_policy_or_from_scratch():
    base = [*TINY, "train.method=expert_iteration"]
    exp = Experiment(load_config(overrides=base))
    policy = exp.model.state_dict()
    assert all(torch.equal(v, policy[k]) for k, v in exp.reward_net.trunk.state_dict().items())
    assert not exp.reward_net.head.weight.detach().any()  # no opinion until trained
    exp = Experiment(load_config(overrides=[*base, "reward.init=scratch"]))
    assert not torch.equal(exp.reward_net.trunk.state_dict()["wte.weight"], exp.model.state_dict()["wte.weight"])


@pytest.mark.parametrize("method", SELF_IMPROVEMENT)
def test_collect_changes_no_weights_and_learn_consumes_its_experience(method, tmp_path):
    # the contract trace workers rely on: collect only reads the weights
    exp = Experiment(load_config(None, [*SMALL, f"train.method={method}", f"logdir={tmp_path}"]))
    problems = exp.data.next(exp.cfg.improve.problems_per_iter)
    before = {k: v.clone() for k, v in [*exp.model.state_dict().items(), *exp.reward_net.state_dict().items()]}
    batch = exp.learner.collect([p.prompt for p in problems], Oracle(exp.task, problems))
    after = [*exp.model.state_dict().items(), *exp.reward_net.state_dict().items()]
    assert all(torch.equal(before[k], v) for k, v in after)
    per_problem = 1 if method == "alphazero" else exp.cfg.improve.samples
    assert batch.size == len(problems) * per_problem and len(batch.heldout_probs) == batch.heldout.sum()
    out = exp.learner.learn(batch)  # the reward net always learns from the labelled traces
    assert out["flops"]["reward"] > 0
    assert not all(torch.equal(before[k], v) for k, v in exp.reward_net.state_dict().items())


@pytest.mark.parametrize("confident,target", [(1.0, "visits"), (1.0, "completed_q"), (0.0, "visits")])
def test_alphazero_trains_the_policy_only_where_the_search_ran(confident, target, tmp_path):
    # confident_prior 1.0 searches every move: each move has an improved policy to learn.
    # 0.0 searches none: no targets, so the policy takes no step (not even weight decay).
    exp = Experiment(load_config(None, [*SMALL, "train.method=alphazero", f"search.confident_prior={confident}",
                                        f"search.policy_target={target}", f"logdir={tmp_path}"]))
    problems = exp.data.next(exp.cfg.improve.problems_per_iter)
    batch = exp.learner.collect([p.prompt for p in problems], Oracle(exp.task, problems))
    mass = torch.cat([v.sum(-1) for v in batch.visits])  # [all moves]
    assert batch.metrics["search/searched_fraction"] == confident
    assert torch.allclose(mass, torch.full_like(mass, confident), atol=1e-5)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    out = exp.learner.learn(batch)
    moved = not all(torch.equal(before[k], v) for k, v in exp.model.state_dict().items())
    assert moved == (confident == 1.0) and (out["flops"]["train"] > 0) == moved


def test_policy_gradient_takes_updates_per_iter_steps_on_its_schedule(tmp_path):
    """``improve.updates_per_iter`` clipped steps per iteration, and the schedule is
    stretched over exactly the steps taken: the run ends where the schedule does."""
    steps, k = 3, 4
    exp = Experiment(load_config(None, [*SMALL, "train.method=policy_gradient", f"train.steps={steps}",
                                        f"improve.updates_per_iter={k}", "optim.warmup_steps=0",
                                        f"logdir={tmp_path}"]))
    lrs = []
    apply = exp.learner.learner.apply

    def spy(loss):
        out = apply(loss)
        lrs.append(out["lr"])
        return out

    exp.learner.learner.apply = spy
    for _ in range(steps):
        exp.train_step()
    opt = exp.learner.learner
    assert len(lrs) == steps * k == opt.step_count == opt.total_steps
    from emergent.agents.learner import lr_at

    assert lrs == [lr_at(i, steps * k, exp.cfg.optim) for i in range(steps * k)]
    assert lrs[-1] < lrs[0]  # the cosine ran its course over the steps taken, not a stretched one


def test_one_policy_gradient_update_is_reinforce_with_the_group_baseline(tmp_path):
    """With one update the clipped ratio is exactly 1: the gradient is REINFORCE's."""
    exp = Experiment(load_config(None, [*SMALL, "train.method=policy_gradient", f"logdir={tmp_path}"]))
    problems = exp.data.next(exp.cfg.improve.problems_per_iter)
    batch = exp.learner.collect([p.prompt for p in problems], Oracle(exp.task, problems))
    batch.scores = np.random.default_rng(0).random(batch.size)  # an untrained policy earns nothing: vary it
    grads = {}

    def capture(loss):
        exp.model.zero_grad()
        loss.backward()
        grads.update({n: p.grad.clone() for n, p in exp.model.named_parameters()})
        return {"lr": 0.0, "grad_norm": torch.zeros(())}

    exp.learner.learner.apply = capture
    exp.learner.learn(batch)
    # by hand: -(A * log p(completion tokens)) / tokens, A = group-normalised verifier reward
    from emergent.agents.data import encode_batch
    from emergent.envs import TOKENIZER

    S = exp.cfg.improve.samples
    reward = np.where(batch.finished, batch.scores, 0.0).reshape(-1, S)
    A = torch.as_tensor(((reward - reward.mean(1, keepdims=True)) / (reward.std(1, keepdims=True) + 1e-4)).reshape(-1),
                        dtype=torch.float32)
    b = encode_batch(TOKENIZER, batch.prompt_of, batch.completions, exp.model.cfg.max_len)
    cut = torch.as_tensor(~batch.finished)
    last = b.loss_mask.cumsum(1).argmax(1)
    b.loss_mask[torch.arange(len(last))[cut], last[cut]] = 0
    logp = torch.log_softmax(exp.model(b.inputs).float(), -1).gather(2, b.targets[..., None]).squeeze(-1)
    exp.model.zero_grad()
    (-(A[:, None] * logp * b.loss_mask).sum() / b.loss_mask.sum()).backward()
    assert A.abs().sum() > 0  # the check below is not vacuous
    for n, p in exp.model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-7)
