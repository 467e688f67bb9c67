"""Self-improvement diagnostics of finished runs, from their TensorBoard scalars: each tag's
mean over the logged iterations, the improvement win rate as total wins over total decided
pairs, and the reward net's online AUC over its last ten logged windows.

    python benchmarks/run_diagnostics.py runs/countdown_compare/alphazero_d_model64_seed*
"""
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAGS = ["search/informative_fraction", "search/solved_fraction", "train/flops_per_solved", "search/improvement_wins",
        "search/improvement_decided_pairs", "reward_net/auc", "reward_net/sibling_pair_auc",
        "search/searched_fraction", "train/sample_accuracy"]

if __name__ == "__main__":
    for d in sys.argv[1:]:
        acc = EventAccumulator(d, size_guidance={"scalars": 0})
        acc.Reload()
        have = acc.Tags()["scalars"]
        v = {t: np.array([e.value for e in acc.Scalars(t)]) for t in TAGS if t in have}
        out = {t.split("/")[1]: float(x.mean()) for t, x in v.items()}
        if "search/improvement_decided_pairs" in v:
            out["win_rate"] = float(v["search/improvement_wins"].sum() / max(v["search/improvement_decided_pairs"].sum(), 1e-9))
        if "reward_net/auc" in v:
            out["auc_last10"] = float(v["reward_net/auc"][-10:].mean())
        print(d.rstrip("/").split("/")[-1], {k: f"{x:.3g}" for k, x in out.items()})
