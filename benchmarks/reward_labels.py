"""How well the reward net ranks a policy's countdown traces, by the labels it learns from.

  python benchmarks/reward_labels.py CHECKPOINT --labels answer|process|sound [--steps 1500 --problems 4000]
      [--n-layer L --n-head H --d-model C --init scratch --lr LR] [--perturb K]

Samples 8 traces per training-split problem from CHECKPOINT's policy (temperature 1), trains
a reward net started from that policy (``reward.init=policy``; batch 128, lr 3e-4; or sized by
--n-layer/--n-head/--d-model and started from scratch) on them,
and prints its AUC and ECE at EOS on 4 traces of each of 500 test problems. Labels:
  answer   the verifier's verdict on the answer (``task.check_steps=false``)
  process  the answer verdict, but 0 at every state from the end of the first false step
  sound    the answer is right and every step is true (``task.check_steps=true``)
--perturb K adds, for each training trace, K copies with one digit of the completion changed
at random, labelled by the verifier: near misses that differ from a real trace in one
number (answer and sound labels only).
One seed; the figures in benchmarks/RESULTS.md came from this script.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from emergent.agents.reward_net import RewardNet, RewardNetConfig
from emergent.agents.reward_trainer import encode_values, near_misses
from emergent.agents.rollouts import sample_rollouts
from emergent.agents.trainer import OptimConfig, Trainer
from emergent.envs import make_task
from emergent.envs.base import scratchpad_steps
from emergent.platform.checkpoint import load_checkpoint, load_model_state
from emergent.platform.config import load_config
from emergent.platform.experiment import Experiment
from emergent.platform.metrics import auc, expected_calibration_error


def traces(policy, task, problems, samples: int, seed: int):
    """Sampled traces, their labels of each kind, and each trace's first false step (or -1)."""
    g = torch.Generator().manual_seed(seed)
    ro = sample_rollouts(
        policy, [p.prompt for p in problems], samples, temperature=1.0, generator=g, device=torch.device("cpu")
    )
    probs = [problems[r] for r in ro.rows]
    s = task.verify_batch(probs, ro.completions, with_steps=True)
    answer = s.exact * ro.finished
    labels = {"answer": answer, "process": answer, "sound": answer & ~s.false_step}
    first_false = [
        int(np.argmin(steps)) if len(steps) and not steps.all() else -1
        for steps in task.step_labels(probs, ro.completions)
    ]
    return ro, {k: v.astype(float) for k, v in labels.items()}, first_false


def perturbed(task, problems, prompts, completions, finished, k: int, rng: np.random.Generator):
    """``reward.near_misses``' copies (K per trace, one digit changed) and their labels of each
    kind (the verifier's, as for the originals)."""
    src, C = near_misses(completions, k, rng)
    s = task.verify_batch([problems[i] for i in src], C, with_steps=True)
    answer = s.exact * np.asarray(finished, dtype=bool)[src]
    return (
        [prompts[i] for i in src],
        C,
        {"answer": answer.astype(float), "sound": (answer & ~s.false_step).astype(float)},
    )


def false_step_end(prompt: str, completion: str, step: int) -> int:
    """Row index (BOS + prompt + completion) of the last character of scratchpad step ``step``."""
    return len(prompt) + sum(len(x) + 1 for x in scratchpad_steps(completion)[: step + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--labels", choices=("answer", "process", "sound"), default="answer")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--problems", type=int, default=4000)
    ap.add_argument("--n-layer", type=int, default=None)
    ap.add_argument("--n-head", type=int, default=None)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--init", choices=("policy", "scratch"), default="policy")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--perturb", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="of the training draws and the perturbations")
    args = ap.parse_args()
    if args.perturb and args.labels == "process":
        ap.error("--perturb takes --labels answer or sound")
    state = load_checkpoint(args.checkpoint)
    cfg = load_config(base=state["config"], overrides=["logdir=/tmp/reward_labels", "eval.pass_k=[]"])
    exp = Experiment(cfg)
    load_model_state(exp.model, state, args.checkpoint)
    policy = exp.model.eval()
    task = make_task("countdown", format="scratchpad")
    rng = np.random.default_rng(0)
    train_p, test_p = task.sample(rng, args.problems, "train", [3, 4]), task.sample(rng, 500, "test", [3, 4])
    (tr, tr_labels, tr_false), (te, te_labels, _) = (
        traces(policy, task, train_p, 8, 1),
        traces(policy, task, test_p, 4, 2),
    )
    y = tr_labels[args.labels]
    prompts, completions = list(tr.prompts), list(tr.completions)
    if args.perturb:
        P, C, lab = perturbed(
            task,
            [train_p[r] for r in tr.rows],
            tr.prompts,
            tr.completions,
            tr.finished,
            args.perturb,
            np.random.default_rng([3, args.seed]),
        )
        prompts, completions, y = prompts + P, completions + C, np.concatenate([y, lab[args.labels]])

    rcfg = RewardNetConfig(n_layer=args.n_layer, n_head=args.n_head, d_model=args.d_model, init=args.init)
    rcfg.validate(policy.cfg)
    net = RewardNet.for_policy(policy, rcfg)
    trainer = Trainer(
        net, OptimConfig(lr=args.lr, min_lr=args.lr, warmup_steps=0, weight_decay=0.1), args.steps, torch.device("cpu")
    )
    draw = np.random.default_rng(args.seed)
    for _ in range(args.steps):
        idx = draw.integers(0, len(y), 128)
        b = encode_values([prompts[i] for i in idx], [completions[i] for i in idx], y[idx], net.cfg.max_len)
        target = b.labels[:, None].expand(b.inputs.shape).clone()
        if args.labels == "process":
            for row, i in enumerate(idx):
                if tr_false[i] >= 0:
                    target[row, false_step_end(tr.prompts[i], tr.completions[i], tr_false[i]) :] = 0.0

        def loss(b=b, target=target):
            bce = F.binary_cross_entropy_with_logits(net(b.inputs), target, reduction="none")
            return (bce * b.mask).sum() / b.mask.sum()

        trainer.step(loss, tokens=b.inputs.numel(), flops=0.0)

    net.eval()
    held = te_labels["process" if args.labels == "process" else args.labels]
    b = encode_values(te.prompts, te.completions, held, net.cfg.max_len)
    lp = torch.tensor([len(p) for p in te.prompts])
    with torch.no_grad():
        v = net.value_at(b.inputs, lp + b.mask.sum(1).long()).numpy()
    print(
        json.dumps(
            {
                "labels": args.labels,
                "steps": args.steps,
                "problems": args.problems,
                "traces": len(y),
                "perturb": args.perturb,
                "seed": args.seed,
                "train_positives": round(float(y.mean()), 4),
                "judge": f"L{net.cfg.n_layer} d{net.cfg.d_model} {args.init} lr {args.lr}",
                "auc": round(auc(v, held), 4),
                "ece": round(expected_calibration_error(v, held), 4),
                "positives": round(float(held.mean()), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
