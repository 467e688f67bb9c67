"""Every TensorBoard tag and FLOP-ledger part, named once. Prefixes group them (cleanrl style).

A module of names only: it imports nothing, so every layer (``agents`` for the scalars a
method measures, ``platform`` for the rest) reads its names from here.
"""

# -- train/: the policy update, and what a method measures of its own traces ------------------
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_CURRICULUM = "train/curriculum_difficulty"  # the highest training difficulty drawn
TRAIN_SAMPLE_ACCURACY = "train/sample_accuracy"  # verifier verdicts on the method's own traces
TRAIN_VOTE_AGREEMENT = "train/vote_agreement"  # label_source=majority_vote: agreement, not accuracy
TRAIN_KEPT_FRACTION = "train/kept_fraction"  # expert_iteration: problems with a kept trace
TRAIN_REWARD_MEAN = "train/reward_mean"  # policy_gradient: mean reward of the group
TRAIN_KL = "train/kl"  # policy_gradient: KL(policy || start), k3 estimate
# self-improvement: the iteration's FLOPs (collecting and learning) per problem of its batch
# that the verifier says it solved (a trace accepted); not logged for a batch with none
TRAIN_FLOPS_PER_SOLVED = "train/flops_per_solved"
SEARCH_SEARCHED_FRACTION = "search/searched_fraction"  # alphazero: moves that ran simulations
# self_label: its latest round (agents/self_label.py); the accuracies are measured against
# gold after the filter ran, for the log only
SELF_LABEL_ROUND = "self_label/round"
SELF_LABEL_DIFFICULTY = "self_label/difficulty"  # what the round labelled
SELF_LABEL_KEPT = "self_label/kept_fraction"  # of its labels, kept by the filter
SELF_LABEL_BUFFER = "self_label/buffer"  # labels of every round so far
SELF_LABEL_ACCURACY = "self_label/label_accuracy"  # of all its labels
SELF_LABEL_KEPT_ACCURACY = "self_label/kept_label_accuracy"  # of the kept ones: what training sees
SELF_LABEL_CONSISTENCY = "self_label/consistency"  # fast mode: the model's own estimate at the top
SEARCH_INFORMATIVE_FRACTION = (
    "search/informative_fraction"  # alphazero: searched moves with a verdict below a root child
)
# alphazero (search.diagnostics): at informative moves where the improved policy's argmax and the
# policy's differ, both completed greedily and judged: the share of decided pairs the improved
# policy's choice wins (agents/improvement.py), and how many pairs were decided
SEARCH_IMPROVEMENT_WIN_RATE = "search/improvement_win_rate"
SEARCH_IMPROVEMENT_DECIDED = "search/improvement_decided_pairs"
SEARCH_IMPROVEMENT_WINS = "search/improvement_wins"
# the same pairs, each choice continued by search.diagnostic_samples sampled completions: won when
# its completions are right more often than the other's
SEARCH_IMPROVEMENT_SAMPLED_WIN_RATE = "search/improvement_sampled_win_rate"
SEARCH_IMPROVEMENT_SAMPLED_DECIDED = "search/improvement_sampled_decided_pairs"
SEARCH_IMPROVEMENT_SAMPLED_WINS = "search/improvement_sampled_wins"
# alphazero: the share of searched problems the search solved (with improve.sample_first: of the
# problems every sampled attempt failed)
SEARCH_SOLVED = "search/solved_fraction"

# -- perf/ -------------------------------------------------------------------------------------
PERF_TOKENS_PER_S = "perf/tokens_per_s"
PERF_MFU = "perf/mfu"
PERF_STEP_S = "perf/step_s"
PERF_EVAL_S = "perf/eval_s"
PERF_ELAPSED_S = "perf/elapsed_s"  # wall clock of the run at each evaluation
PERF_TRACES_PER_S = "perf/traces_per_s"  # ray: traces consumed per second
PERF_WORKER_UTILISATION = "perf/worker_utilisation"  # ray: busy time / (workers x wall time)
PERF_WEIGHT_SYNC_S = "perf/weight_sync_s"  # ray: export + load of one weights version
PERF_STALENESS = "perf/staleness"  # ray: learner version - trace version
# ray: share of the wall clock the learner spends learning, evaluating and checkpointing
# (not waiting for a batch); near 1 the learner bounds the run, near 0 the trace workers do
PERF_LEARNER_BUSY = "perf/learner_busy"
PERF_DATA_WAIT_S = "perf/data_wait_s"  # ray: seconds per step the learner waited for its batch
DATA_TOO_LONG = "data/too_long_skipped"  # fresh training draws longer than the context

# -- compute/: the FLOP ledger -------------------------------------------------------------------
LEDGER_PARTS = ("train", "generate", "search", "reward")  # what a method spends
TRAIN, GENERATE, SEARCH, REWARD = LEDGER_PARTS  # ledger part names
WARM_START = "warm_start"  # everything the improve.init_from checkpoint's ledger held: spent before this run
COMPUTE_TOTAL_FLOPS = "compute/total_flops"
COMPUTE_TRAIN_FLOPS = "compute/train_flops"
COMPUTE_GENERATE_FLOPS = "compute/generate_flops"

# -- reward_net/ ---------------------------------------------------------------------------------
REWARD_LOSS = "reward_net/loss"
REWARD_AUC = "reward_net/auc"
# with a step head: the AUC, over one batch's held-out traces, of P(correct) x each step's P(true)
REWARD_PROCESS_AUC = "reward_net/process_auc"
REWARD_ECE = "reward_net/ece"
REWARD_DISAGREEMENT = "reward_net/verifier_disagreement"
# alphazero with net-valued leaves: over pairs of root children with verdicts below both and
# different mean verdicts, the share the reward net's values order the same way (ties a half):
# does the judge rank the moves the search compares as the verifier does; and the pair count
REWARD_SIBLING_AUC = "reward_net/sibling_pair_auc"
REWARD_SIBLING_PAIRS = "reward_net/sibling_pairs"

# -- eval/ and text --------------------------------------------------------------------------------
# every evaluation's metrics, each a mean over a split's problems (``Scores``: the answer equals
# gold or the task's check accepts it; the share of the gold's characters matched in place;
# the normalised edit distance to gold)
EVAL_EXACT, EVAL_TOKEN_ACCURACY, EVAL_EDIT_DISTANCE = "exact_match", "token_accuracy", "edit_distance"
EVAL_METRICS = (EVAL_EXACT, EVAL_TOKEN_ACCURACY, EVAL_EDIT_DISTANCE)
# scratchpad formats with a step checker: the share of right answers whose scratchpad holds a
# false step (the verifier accepts them unless task.check_steps; 0 when no answer is right)
EVAL_FALSE_STEPS = "false_steps"
# the same formats: the share of problems whose answer is right and every step true
EVAL_SOUND_EXACT = "sound_exact_match"
# the largest length L with exact match >= eval.frontier_threshold at every length <= L
# (``eval/<split>/frontier`` within a split; ``eval/frontier`` over the held-out splits, test
# then extrapolate, so it can pass the training range)
EVAL_FRONTIER = "frontier"
EVAL_LENGTH_FRONTIER = "eval/frontier"
TEXT_CONFIG = "config"
TEXT_SAMPLES = "samples/{split}"


def eval_tag(split: str, metric: str, difficulty: int | None = None) -> str:
    """``eval/<split>/<metric>`` or, per difficulty, ``eval/<split>/d<k>/<metric>``."""
    assert metric in EVAL_METRICS or metric in (EVAL_FALSE_STEPS, EVAL_SOUND_EXACT, EVAL_FRONTIER), metric
    return f"eval/{split}/{metric}" if difficulty is None else f"eval/{split}/d{difficulty}/{metric}"


def compute_tag(part: str) -> str:
    assert part in LEDGER_PARTS or part == WARM_START, part
    return f"compute/{part}_flops"


def pass_tag(split: str, k: int, difficulty: int | None = None) -> str:
    """pass@k (eval.pass_k): ``eval/<split>/pass@<k>``, or per difficulty ``eval/<split>/d<d>/pass@<k>``."""
    return f"eval/{split}/pass@{k}" if difficulty is None else f"eval/{split}/d{difficulty}/pass@{k}"


def maj_tag(split: str, k: int, difficulty: int | None = None) -> str:
    """maj@k: the majority answer of k samples is correct."""
    return f"eval/{split}/maj@{k}" if difficulty is None else f"eval/{split}/d{difficulty}/maj@{k}"


# -- vs_flops/: every eval scalar again, with cumulative FLOPs as the step ---------------------------
# Written to the run's ``vs_flops/`` subdirectory (its own event file: a resume purges it by
# FLOPs, not by step). Overlaying runs there is the equal-compute chart.
VS_FLOPS_DIR = "vs_flops"
VS_FLOPS_UNIT = 1e6  # the step is compute/total_flops in MFLOPs (10^6 FLOPs), rounded down


EVALS_DIR = "evals"  # <run>/evals/step_<N>.npz: the per-problem record of each evaluation


def vs_flops_tag(eval_tag: str) -> str:
    """``eval/test/exact_match`` -> ``vs_flops/test/exact_match``."""
    assert eval_tag.startswith("eval/"), eval_tag
    return VS_FLOPS_DIR + eval_tag[len("eval") :]
