"""What a trained reward net with a step head knows, on its own policy's fresh traces.

  python benchmarks/reward_readouts.py runs/countdown_alphazero_diagnostics/<run>/last.pt

Loads a self-improvement checkpoint (a countdown run with ``reward.step_labels``), samples 4
traces (temperature 1) for each of 500 test problems from its policy, and prints the AUC
against the verdicts of each readout: the value head at EOS, the product and the minimum of
the step head's P(true) over the trace's steps, their product with the value, and the
policy's own mean log-probability of the trace; then the step head's AUC on the step
checker's labels of every step, how many wrong traces have every step true, and the value's
AUC among the traces whose steps are all true. One checkpoint, one draw of traces.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from emergent.agents.reward_trainer import encode_values, step_scores
from emergent.agents.rollouts import sample_rollouts
from emergent.platform.checkpoint import load_checkpoint, load_model_state
from emergent.platform.config import load_config
from emergent.platform.experiment import Experiment
from emergent.platform.metrics import auc


def main(checkpoint: str) -> None:
    state = load_checkpoint(checkpoint)
    cfg = load_config(base=state["config"], overrides=["logdir=/tmp/reward_readouts", "improve.init_from=null"])
    exp = Experiment(cfg)
    load_model_state(exp.model, state, checkpoint)
    exp.method.load_state_dict(state["learner"])  # the method's state: its reward net among it
    net, policy, task = exp.method.reward_net.eval(), exp.model.eval(), exp.task
    if net.step_head is None:
        raise SystemExit(f"{checkpoint}: its reward net has no step head (reward.step_labels was off)")
    problems = task.sample(np.random.default_rng(5), 500, "test", [3, 4])
    ro = sample_rollouts(
        policy,
        [p.prompt for p in problems],
        4,
        temperature=1.0,
        generator=torch.Generator().manual_seed(9),
        device=exp.device,
    )
    probs = [problems[r] for r in ro.rows]
    y = task.verdicts(probs, ro.completions) & ro.finished
    b = encode_values(ro.prompts, ro.completions, y.astype(float), net.cfg.max_len)
    with torch.no_grad():
        v, s = net.both(b.inputs)
        logp = torch.log_softmax(policy(b.inputs), -1)
    eos = torch.tensor([len(p) for p in ro.prompts]) + b.mask.sum(1).long() - 1
    value = torch.sigmoid(v[torch.arange(len(eos)), eos]).numpy()
    steps = step_scores(torch.sigmoid(s).numpy(), ro.prompts, ro.completions)  # [R] of [steps]
    prod = np.array([x.prod() for x in steps])
    low = np.array([x.min() if len(x) else 1.0 for x in steps])
    token_logp = logp[:, :-1].gather(2, b.inputs[:, 1:, None]).squeeze(-1)
    mask = b.mask[:, 1:]
    mean_logp = ((token_logp * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
    print(f"{checkpoint}: {len(y)} traces, {y.mean():.3f} right")
    for name, x in [
        ("value at EOS", value),
        ("steps: product", prod),
        ("steps: minimum", low),
        ("value x steps", value * prod),
        ("policy mean log-prob", mean_logp),
    ]:
        print(f"  {name:22s} AUC {auc(x, y):.3f}")
    labels = task.step_labels(probs, ro.completions)
    xs = np.concatenate(steps)
    ys = np.concatenate([lab[: len(x)] for lab, x in zip(labels, steps)]).astype(bool)
    sound = np.array([len(lab) > 0 and bool(lab.all()) for lab in labels])
    print(f"  step head on {len(ys)} steps ({ys.mean():.3f} true): AUC {auc(xs, ys):.3f}")
    print(f"  wrong traces with every step true: {(sound & ~y).sum() / max((~y).sum(), 1):.3f}")
    print(f"  value AUC among the {sound.sum()} traces with every step true: {auc(value[sound], y[sound]):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
