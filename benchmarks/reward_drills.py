"""What a trained judge learns from more of its policy's traces, and from step drills, offline.

  python benchmarks/reward_drills.py runs/countdown_alphazero_diagnostics/<run>/last.pt \
      --source traces|drills [--updates 1500 --batch 128 --lr 1e-3]

Loads a self-improvement checkpoint of a countdown run with a step head (its policy and its
trained reward net), then trains that reward net further, ``--updates`` steps of ``--batch``
rows at ``--lr``, from one of two sources:
  traces  4 sampled traces (temperature 1) of the policy for each of 3,000 training-split
          problems, drawn once and labelled by the verifier (sound derivations) and the step
          checker: what an online judge's replay holds, a fixed set it sees again and again
  drills  fresh step drills every update (``Task.drill_steps``: scratchpads of well-formed
          steps over a training problem's numbers, true or false at random), labelled by the
          step checker, for the step head alone (``reward.step_drills``)
Every fifth of the run it prints the AUC, on 4 sampled traces of each of 500 test problems
(one draw), of the value head at EOS, of the product of the step head's P(true) over a
trace's steps, and of their product (the process score), and the step head's AUC on each
step's own label. One checkpoint, one seed of the draws.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from emergent.agents.reward_net import value_loss
from emergent.agents.reward_trainer import encode_values, step_scores
from emergent.agents.rollouts import sample_rollouts
from emergent.agents.trainer import OptimConfig, Trainer
from emergent.platform.checkpoint import load_checkpoint, load_model_state
from emergent.platform.config import load_config
from emergent.platform.experiment import Experiment
from emergent.platform.metrics import auc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--source", choices=("traces", "drills"), required=True)
    ap.add_argument("--updates", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="of the training draws")
    args = ap.parse_args()
    state = load_checkpoint(args.checkpoint)
    cfg = load_config(base=state["config"], overrides=["logdir=/tmp/reward_drills", "improve.init_from=null"])
    exp = Experiment(cfg)
    load_model_state(exp.model, state, args.checkpoint)
    exp.method.load_state_dict(state["learner"])  # the method's state: its trained reward net among it
    net, policy, task = exp.method.reward_net, exp.model.eval(), exp.task
    if net.step_head is None or not task.has_step_drills:
        raise SystemExit(f"{args.checkpoint}: needs a reward net with a step head on a task that writes drills")
    train_p = task.sample(np.random.default_rng(0), 3000, "train", [3, 4])
    test_p = task.sample(np.random.default_rng(5), 500, "test", [3, 4])

    def sampled(problems, seed):
        ro = sample_rollouts(
            policy,
            [p.prompt for p in problems],
            4,
            temperature=1.0,
            generator=torch.Generator().manual_seed(seed),
            device=torch.device("cpu"),
        )
        probs = [problems[r] for r in ro.rows]
        return ro, probs, task.verdicts(probs, ro.completions) & ro.finished

    te, te_probs, te_y = sampled(test_p, 9)
    te_steps = task.step_labels(te_probs, te.completions)
    tr, tr_probs, tr_y = sampled(train_p, 1) if args.source == "traces" else (None, None, None)
    tr_steps = [tuple(s.tolist()) for s in task.step_labels(tr_probs, tr.completions)] if tr is not None else None

    def evaluate() -> dict:
        net.eval()
        b = encode_values(te.prompts, te.completions, te_y.astype(float), net.cfg.max_len)
        with torch.no_grad():
            v, s = net.both(b.inputs)
        net.train()
        eos = torch.tensor([len(p) for p in te.prompts]) + b.mask.sum(1).long() - 1
        value = torch.sigmoid(v[torch.arange(len(eos)), eos]).numpy()
        steps = step_scores(torch.sigmoid(s).numpy(), te.prompts, te.completions)  # [R] of [steps]
        prod = np.array([x.prod() for x in steps])
        xs = np.concatenate(steps)
        ys = np.concatenate([lab[: len(x)] for lab, x in zip(te_steps, steps)])
        return {
            "value_auc": round(auc(value, te_y), 3),
            "steps_auc": round(auc(prod, te_y), 3),
            "process_auc": round(auc(value * prod, te_y), 3),
            "step_auc": round(auc(xs, ys), 3),
        }

    print(json.dumps({"checkpoint": args.checkpoint, "source": args.source, "updates": 0, **evaluate()}), flush=True)
    optim = OptimConfig(lr=args.lr, min_lr=args.lr, warmup_steps=0, weight_decay=0.1)
    trainer = Trainer(net, optim, args.updates, torch.device("cpu"))
    draw, start, flops = np.random.default_rng([args.seed, 1]), time.time(), 0.0
    for k in range(1, args.updates + 1):
        if args.source == "traces":
            idx = draw.integers(0, len(tr_y), args.batch)
            batch = encode_values(
                [tr.prompts[i] for i in idx],
                [tr.completions[i] for i in idx],
                tr_y[idx].astype(float),
                net.cfg.max_len,
                [tr_steps[i] for i in idx],
            )
        else:
            problems = [train_p[i] for i in draw.integers(0, len(train_p), args.batch)]
            drills = [task.drill_steps(p, draw) for p in problems]
            labels = [tuple(s.tolist()) for s in task.step_labels(problems, drills)]
            prompts, nothing = [p.prompt for p in problems], np.zeros(args.batch)
            batch = encode_values(prompts, drills, nothing, net.cfg.max_len, labels, [False] * args.batch)
        flops += trainer.step_batch(lambda b: value_loss(net, b), batch).flops
        if k % max(args.updates // 5, 1) == 0:
            line = {"source": args.source, "updates": k, "flops": float(f"{flops:.3g}"), **evaluate()}
            print(json.dumps({**line, "s": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
