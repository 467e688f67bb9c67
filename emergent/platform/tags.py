"""Every TensorBoard tag and metric key, named once. Prefixes group them (cleanrl style)."""

TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_CURRICULUM = "train/curriculum_difficulty"  # the highest training difficulty drawn
PERF_TOKENS_PER_S = "perf/tokens_per_s"
PERF_MFU = "perf/mfu"
PERF_STEP_S = "perf/step_s"
PERF_EVAL_S = "perf/eval_s"
PERF_ELAPSED_S = "perf/elapsed_s"                    # wall clock of the run at each evaluation
PERF_TRACES_PER_S = "perf/traces_per_s"              # ray: traces consumed per second
PERF_WORKER_UTILISATION = "perf/worker_utilisation"  # ray: busy time / (workers x wall time)
PERF_WEIGHT_SYNC_S = "perf/weight_sync_s"            # ray: export + load of one weights version
PERF_STALENESS = "perf/staleness"                    # ray: learner version - trace version
DATA_TOO_LONG = "data/too_long_skipped"             # fresh training draws longer than the context
COMPUTE_TOTAL_FLOPS = "compute/total_flops"
COMPUTE_TRAIN_FLOPS = "compute/train_flops"
COMPUTE_GENERATE_FLOPS = "compute/generate_flops"
REWARD_LOSS = "reward_net/loss"
REWARD_AUC = "reward_net/auc"
REWARD_ECE = "reward_net/ece"
REWARD_DISAGREEMENT = "reward_net/verifier_disagreement"

EVAL_METRICS = ("exact_match", "token_accuracy", "edit_distance")
TEXT_CONFIG = "config"
TEXT_SAMPLES = "samples/{split}"


def eval_tag(split: str, metric: str, difficulty: int | None = None) -> str:
    """``eval/<split>/<metric>`` or, per difficulty, ``eval/<split>/d<k>/<metric>``."""
    assert metric in EVAL_METRICS, metric
    return f"eval/{split}/{metric}" if difficulty is None else f"eval/{split}/d{difficulty}/{metric}"


def compute_tag(part: str) -> str:
    return f"compute/{part}_flops"
