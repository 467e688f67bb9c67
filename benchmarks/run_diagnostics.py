"""Self-improvement diagnostics of finished runs, from their TensorBoard scalars: each tag's
mean over the logged iterations, the improvement win rate as total wins over total decided
pairs (greedy completions, and with ``search.diagnostic_samples`` sampled ones), and the reward
net's online AUC (and, with a step head, the process score's) over its last ten logged
windows. With two or more runs (seeds of one cell), a last line per figure: the mean, the range
and the 95 % t interval over the runs (``emergent/platform/stats.py``).

    python benchmarks/run_diagnostics.py runs/countdown_compare/alphazero_d_model64_seed*
"""

import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from emergent.platform.stats import t_interval

TAGS = [
    "search/informative_fraction",
    "search/solved_fraction",
    "train/flops_per_solved",
    "search/improvement_wins",
    "search/improvement_decided_pairs",
    "search/improvement_sampled_wins",
    "search/improvement_sampled_decided_pairs",
    "reward_net/auc",
    "reward_net/process_auc",
    "reward_net/sibling_pair_auc",
    "search/searched_fraction",
    "train/sample_accuracy",
]
SUMMARY = [
    "win_rate",
    "decided_pairs",
    "sampled_win_rate",
    "sampled_decided_pairs",
    "informative_fraction",
    "auc_last10",
    "process_auc_last10",
    "sibling_pair_auc",
    "solved_fraction",
    "flops_per_solved",
]


def diagnostics(run: str) -> dict[str, float]:
    acc = EventAccumulator(run, size_guidance={"scalars": 0})
    acc.Reload()
    have = acc.Tags()["scalars"]
    v = {t: np.array([e.value for e in acc.Scalars(t)]) for t in TAGS if t in have}
    out = {t.split("/")[1]: float(x.mean()) for t, x in v.items()}
    if "search/improvement_decided_pairs" in v:
        decided = v["search/improvement_decided_pairs"].sum()
        if decided > 0:  # no decided pair: no rate (not a rate of 0)
            out["win_rate"] = float(v["search/improvement_wins"].sum() / decided)
        out["decided_pairs"] = float(decided)  # the logged windows' sum (each window's mean)
    if "search/improvement_sampled_decided_pairs" in v:  # search.diagnostic_samples: sampled completions
        decided = v["search/improvement_sampled_decided_pairs"].sum()
        if decided > 0:
            out["sampled_win_rate"] = float(v["search/improvement_sampled_wins"].sum() / decided)
        out["sampled_decided_pairs"] = float(decided)
    for tag in ("reward_net/auc", "reward_net/process_auc"):  # process: with a step head
        if tag in v:
            out[tag.split("/")[1] + "_last10"] = float(v[tag][-10:].mean())
    return out


if __name__ == "__main__":
    runs = {d.rstrip("/").split("/")[-1]: diagnostics(d) for d in sys.argv[1:]}
    for name, out in runs.items():
        print(name, {k: f"{x:.3g}" for k, x in out.items()})
    if len(runs) > 1:
        for key in SUMMARY:
            x = np.array([out[key] for out in runs.values() if key in out])
            if len(x) > 1:
                mean, half = t_interval(x)
                print(
                    f"{key}: mean {mean:.3g} [{mean - half:.3g}, {mean + half:.3g}] (95 % t over {len(x)} runs), "
                    f"range {x.min():.3g}-{x.max():.3g}"
                )
