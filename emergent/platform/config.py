"""Structured configs: one dataclass tree, YAML files, dotlist overrides, strict checks.

The defaults *are* the quickstart (configs/quickstart.yaml spells them out): plain
``emergent train`` trains a small Transformer on 1-3 digit reversed addition.

``load_config`` is the only way a run gets its config. Every mistake it can see — an
unknown key, a wrong type, an unknown task / method / runtime / format, a bad range —
raises ``ConfigError`` with one line naming the key or value and the valid choices,
before any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from emergent.agents import METHODS as METHOD_CLASSES
from emergent.agents import reads_key
from emergent.agents.method import ImproveConfig
from emergent.agents.model import PLACE_SCHEMES, ModelConfig
from emergent.agents.reward_net import RewardNetConfig
from emergent.agents.search import SearchConfig
from emergent.agents.sections import MethodConfig, TaskSection, TrainSection
from emergent.agents.self_label import SelfLabelConfig
from emergent.agents.trainer import OptimConfig
from emergent.envs import SPLITS, TASKS, SplitSpec, Task, make_task

from .errors import ConfigError

METHODS = tuple(METHOD_CLASSES)  # every registered method (emergent/agents/method.py)
RUNTIMES = ("local", "ray")
DEVICES = ("auto", "cpu", "cuda")
TARGETS = ("trace", "answer")


@dataclass
class TaskConfig:
    name: str = "addition"
    # a module imported before the task is looked up (a dotted name on sys.path): a task
    # written outside emergent registers itself there with ``@register_task``
    module: Optional[str] = None
    format: Optional[str] = None  # null: the task's default format (resolved when loaded)
    difficulty: List[int] = field(default_factory=lambda: [1, 3])  # training range [lo, hi]
    extrapolate: List[int] = field(default_factory=lambda: [4, 5])  # held-out range above it
    train_size: Optional[int] = None  # a fixed training set of this many problems; None: unlimited
    data_seed: int = 0  # seed of that fixed set: the same data for every run seed
    heldout_fraction: float = 0.1  # share of the problem space reserved for `test`
    # scratchpad formats: a trace counts as correct only if every step is true as well as
    # the answer (off: the answer alone decides; eval logs false_steps either way)
    check_steps: bool = False


@dataclass
class TrainConfig:
    method: str = "supervised"
    steps: int = 1800  # updates (supervised) or iterations (self-improvement)
    batch_size: int = 64
    target: str = "trace"  # supervised: learn the gold trace, or the answer only
    log_every: int = 25
    compile: bool = False  # torch.compile the loss (pays off on CUDA)
    # a wall-clock budget (seconds, evaluations included, summed over resumes): the step
    # that passes it is the last, evaluated and checkpointed. null: train.steps decides
    time_limit_s: Optional[float] = None
    # a compute budget (FLOPs, compute/total_flops: a warm start's included): the step that
    # passes it is the last, evaluated and checkpointed. null: train.steps decides
    flop_budget: Optional[float] = None
    # difficulty curriculum: training problems start at the lowest training difficulty, and
    # the next one joins once the training accuracy at the highest drawn so far reaches
    # this, over curriculum_window problems of it (self-improvement: the verifier's
    # verdicts on its own traces, vote agreement under majority_vote; supervised:
    # teacher-forced exact match). null: every difficulty from the start
    curriculum: Optional[float] = None
    curriculum_window: int = 256


@dataclass
class EvalConfig:
    every: int = 300  # evaluate every N steps (and at the first and last)
    problems: int = 300  # fixed problems per split, spread over difficulties
    splits: List[str] = field(default_factory=lambda: list(SPLITS))
    seed: int = 1234  # the eval sets depend on this, not on the run's seed
    batch_size: int = 512
    samples: int = 4  # sample traces logged as text per split
    decode: str = "greedy"  # greedy | search (MCTS with the search.* settings)
    # pass@k and maj@k: sample pass_samples (null: max k) completions per problem at
    # temperature; logged as eval/<split>/pass@<k> and maj@<k>. []: off
    pass_k: List[int] = field(default_factory=list)
    pass_samples: Optional[int] = None
    temperature: float = 1.0
    # eval/<split>/frontier and eval/frontier: the largest length with exact match >= this at
    # every length up to it (give each length enough problems: eval.problems / lengths)
    frontier_threshold: float = 0.99


@dataclass
class RayConfig:
    """runtime=ray: trace workers and a learner actor, or a group of them (see platform/ray_runtime.py)."""

    address: Optional[str] = None  # None: RAY_ADDRESS, else a `ray start` cluster here, else a new local one
    dashboard: bool = True  # Ray's dashboard when this command starts a new local Ray (a cluster
    # it joins keeps its own); false saves about 5 CPU-seconds a start
    workers: int = 2  # trace-worker actors
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    learner_cpus: float = 0.0  # reserved; it mostly waits for traces (0: one torch thread, or the
    # driver's thread count for supervised runs, which have no workers)
    learner_gpus: Optional[float] = None  # None: 1 when the cluster has a GPU, else 0
    # data-parallel learner replicas (torch.distributed: gloo on CPU, NCCL on CUDA), each with
    # learner_cpus and learner_gpus; rank 0 evaluates, checkpoints, logs and publishes weights
    learners: int = 1
    # weights versions a consumed batch may lag the learner; at most max_staleness + 1 batches
    # are in flight, so null (workers - 1) is the least that keeps every worker writing
    max_staleness: Optional[int] = None
    max_restarts: int = 3  # per trace worker (a batch in flight when it dies is dropped), and
    # for the learner (a new one resumes the run from its checkpoint)


@dataclass
class Config:
    experiment: str = "quickstart"
    run_name: Optional[str] = None  # None: <method>_L<n_layer>_d<d_model>_<pos>_s<seed>
    logdir: str = "runs"
    seed: int = 0
    runtime: str = "local"
    device: str = "auto"
    resume: bool = False
    checkpoint_every: int = 300
    progress: bool = True
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    improve: ImproveConfig = field(default_factory=ImproveConfig)  # self-improvement methods
    reward: RewardNetConfig = field(default_factory=RewardNetConfig)  # the reward-and-objective network
    search: SearchConfig = field(default_factory=SearchConfig)  # MCTS (alphazero)
    self_label: SelfLabelConfig = field(default_factory=SelfLabelConfig)  # self-labelling rounds (self_label)
    ray: RayConfig = field(default_factory=RayConfig)  # runtime=ray

    @property
    def default_run_name(self) -> str:
        m = self.model
        return f"{self.train.method}_L{m.n_layer}_d{m.d_model}_{m.pos}_s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.logdir) / self.experiment / (self.run_name or self.default_run_name)

    @property
    def splits(self) -> SplitSpec:
        return SplitSpec(train=tuple(self.task.difficulty), extrapolate=tuple(self.task.extrapolate))


def import_task_module(module: Optional[str]) -> None:
    """Import ``task.module`` (where an outside task registers itself); a one-line error if it
    cannot be imported. Every process that builds the task calls it (through ``build_task``)."""
    if module is None:
        return
    import importlib

    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of the user's module is a config error
        raise ConfigError(
            f"task.module={module!r} cannot be imported: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def build_task(cfg: Config) -> Task:
    """The task a config names, with its format, held-out share and step checking."""
    t = cfg.task
    import_task_module(t.module)
    return make_task(t.name, format=t.format, heldout_fraction=t.heldout_fraction, check_steps=t.check_steps)


def _one_line(e: OmegaConfBaseException) -> str:
    return str(getattr(e, "msg", None) or e).splitlines()[0]


def _valid_keys(full_key: str) -> list[str]:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    root = OmegaConf.structured(Config)
    node = OmegaConf.select(root, parent) if parent else root
    return sorted(node.keys()) if OmegaConf.is_dict(node) else []


def merge_config(base, sources: Sequence[Any]) -> Any:
    """Merge OmegaConf sources onto ``base``, turning OmegaConf errors into ConfigError."""
    try:
        for src in sources:
            base = OmegaConf.merge(base, src)
        return base
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or "?"
        valid = _valid_keys(key)
        raise ConfigError(f"unknown config key '{key}'" + (f"; valid keys here: {valid}" if valid else "")) from None
    except ValidationError as e:
        key = getattr(e, "full_key", None)
        where = f"config key '{key}': " if key else "config: "
        raise ConfigError(where + _one_line(e)) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {_one_line(e)}") from None


def parse_overrides(overrides: Sequence[str]):
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. model.d_model=128)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {_one_line(e)}") from None


def load_yaml(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = OmegaConf.load(p)
    except Exception as e:  # YAML syntax errors come in several types
        raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not OmegaConf.is_dict(data):
        raise ConfigError(f"config file {p} must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), base: Any = None) -> Config:
    """Defaults <- YAML file <- overrides, then ``validate``. ``base`` (a YAML string or
    OmegaConf node) replaces the defaults, e.g. the config stored in a checkpoint."""
    root = OmegaConf.structured(Config)
    sources = []
    if base is not None:
        sources.append(OmegaConf.create(base) if isinstance(base, str) else base)
    if path is not None:
        sources.append(load_yaml(path))
    sources.append(parse_overrides(overrides))
    merged = merge_config(root, sources)
    try:
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {_one_line(e)}") from None
    validate(cfg)
    return cfg


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"section.key": value}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_method_keys(cfg: Config) -> None:
    """A key that some method reads, set away from its default for a method that does not
    read it, is refused: it would be silently ignored. ``search.*`` is also read by an
    evaluation that decodes by search (``eval.decode=search``)."""
    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(Config)))
    method = cfg.train.method
    for key, value in flatten(OmegaConf.to_container(OmegaConf.structured(cfg))).items():
        if value == defaults.get(key) or (key.startswith("search.") and cfg.eval.decode == "search"):
            continue
        readers = [m for m in METHODS if reads_key(m, key)]
        if readers and method not in readers:
            raise ConfigError(
                f"{key}={value!r} is not read by train.method={method}, only by {readers}: "
                f"remove it (or choose one of those methods)"
            )


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {sorted(choices)}")


def validate(cfg: Config) -> None:
    """Semantic checks OmegaConf's types cannot express."""
    import_task_module(cfg.task.module)
    _choice("task.name", cfg.task.name, TASKS)
    _choice("train.method", cfg.train.method, METHODS)
    _choice("runtime", cfg.runtime, RUNTIMES)
    if cfg.runtime == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError("runtime=ray needs Ray: pip install 'emergent[ray]' (or pip install 'ray[default]')")
    if cfg.ray.workers < 1 or (cfg.ray.max_staleness or 0) < 0 or cfg.ray.max_restarts < 0:
        raise ConfigError("ray.workers must be >= 1, ray.max_staleness and ray.max_restarts >= 0")
    if cfg.ray.learners < 1:
        raise ConfigError(f"ray.learners must be >= 1, got {cfg.ray.learners}")
    if cfg.ray.learners > 1 and cfg.runtime != "ray":
        raise ConfigError(f"ray.learners={cfg.ray.learners} needs runtime=ray (the local runtime is one process)")
    if cfg.ray.max_staleness is None:  # resolved here, so a run records what it ran with
        cfg.ray.max_staleness = cfg.ray.workers - 1
    _choice("device", cfg.device, DEVICES)
    _choice("train.target", cfg.train.target, TARGETS)
    _choice("eval.decode", cfg.eval.decode, ("greedy", "search"))
    for split in cfg.eval.splits:
        _choice("eval.splits", split, SPLITS)
    for key in ("difficulty", "extrapolate"):
        rng = getattr(cfg.task, key)
        if len(rng) != 2 or rng[0] > rng[1]:
            raise ConfigError(f"task.{key} must be a range [lo, hi] with lo <= hi, got {list(rng)}")
    positive = {
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size,
        "train.log_every": cfg.train.log_every,
        "eval.every": cfg.eval.every,
        "eval.problems": cfg.eval.problems,
        "eval.batch_size": cfg.eval.batch_size,
        "checkpoint_every": cfg.checkpoint_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.train.curriculum is not None and not 0 < cfg.train.curriculum <= 1:
        raise ConfigError(
            f"train.curriculum must lie in (0, 1] (a training accuracy) or be null, got {cfg.train.curriculum}"
        )
    if cfg.train.curriculum_window < 1:
        raise ConfigError(f"train.curriculum_window must be >= 1, got {cfg.train.curriculum_window}")
    if cfg.train.time_limit_s is not None and not cfg.train.time_limit_s > 0:
        raise ConfigError(f"train.time_limit_s must be > 0 seconds or null, got {cfg.train.time_limit_s}")
    if cfg.train.flop_budget is not None and not cfg.train.flop_budget > 0:
        raise ConfigError(f"train.flop_budget must be > 0 FLOPs or null, got {cfg.train.flop_budget}")
    if not 0 < cfg.eval.frontier_threshold <= 1:
        raise ConfigError(f"eval.frontier_threshold must lie in (0, 1], got {cfg.eval.frontier_threshold}")
    if cfg.eval.pass_k:
        if min(cfg.eval.pass_k) < 1:
            raise ConfigError(f"eval.pass_k must hold k >= 1, got {list(cfg.eval.pass_k)}")
        n = cfg.eval.pass_samples
        if n is not None and n < max(cfg.eval.pass_k):
            raise ConfigError(
                f"eval.pass_samples={n} is fewer than the largest k in eval.pass_k={list(cfg.eval.pass_k)}"
            )
        if not cfg.eval.temperature > 0:
            raise ConfigError(f"eval.temperature must be > 0 to sample for pass@k, got {cfg.eval.temperature}")
    if cfg.task.train_size is not None and cfg.task.train_size < 1:
        raise ConfigError(f"task.train_size must be >= 1 or null, got {cfg.task.train_size}")
    for name in ("experiment", "run_name"):
        value = getattr(cfg, name)
        if value is not None and (not value or "/" in value or value in (".", "..")):
            raise ConfigError(f"{name}={value!r} must be a plain directory name")
    try:
        task = build_task(cfg)
    except ValueError as e:
        raise ConfigError(f"task.format / task.heldout_fraction / task.check_steps: {e}") from None
    if cfg.improve.init_from is not None and not Path(cfg.improve.init_from).is_file():
        raise ConfigError(f"improve.init_from: checkpoint not found: {cfg.improve.init_from}")
    check_method_keys(cfg)
    cfg.task.format = task.format  # resolve null to the task's default: runs record what they ran
    if cfg.model.pos in PLACE_SCHEMES and (
        cfg.task.name not in ("addition", "multiplication") or task.format != "reversed"
    ):
        raise ConfigError(
            f"model.pos={cfg.model.pos} gives digits their place in an arithmetic prompt ending in "
            f"'=' and a reversed answer: task.name=addition or multiplication with task.format=reversed, "
            f"not {cfg.task.name} ({task.format})"
        )
    try:
        cfg.splits.validate(task)
        cfg.model.validate()
        cfg.optim.validate()
        cfg.improve.validate()
        cfg.search.validate()
        cfg.self_label.validate()
        cfg.reward.validate(cfg.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    votes = cfg.train.method == "expert_iteration" and cfg.improve.label_source == "majority_vote"
    if cfg.reward.step_labels is None and reads_key(cfg.train.method, "reward.step_labels"):
        # resolved where a reward net trains, so the run records what it ran
        cfg.reward.step_labels = bool(cfg.task.check_steps) and not votes
    elif cfg.reward.step_labels and not task.has_step_checker:
        raise ConfigError(
            f"reward.step_labels=true needs a step checker: task {cfg.task.name!r} format {task.format!r} has none"
        )
    elif cfg.reward.step_labels and votes:
        raise ConfigError(
            "reward.step_labels come from the step checker, which improve.label_source=majority_vote "
            "never calls: set reward.step_labels=false"
        )
    if cfg.reward.step_drills and reads_key(cfg.train.method, "reward.step_drills"):
        if not cfg.reward.step_labels:
            raise ConfigError("reward.step_drills train the reward net's step head: set reward.step_labels=true")
        if not task.has_step_drills:
            raise ConfigError(
                f"reward.step_drills: task {cfg.task.name!r} format {task.format!r} writes no step drills"
            )
    if cfg.reward.near_misses and votes:
        raise ConfigError(
            "reward.near_misses are labelled by the verifier, which improve.label_source=majority_vote "
            "never calls: set reward.near_misses=0"
        )


def method_config(cfg: Config) -> MethodConfig:
    """The typed sections the run's method is built from (``agents.build_method``): what
    agents/ sees of the config."""
    t, tr = cfg.task, cfg.train
    return MethodConfig(
        method=tr.method,
        seed=cfg.seed,
        train=TrainSection(steps=tr.steps, batch_size=tr.batch_size, target=tr.target, compile=tr.compile),
        task=TaskSection(
            name=t.name,
            format=t.format,
            heldout_fraction=t.heldout_fraction,
            check_steps=t.check_steps,
            difficulty=(int(t.difficulty[0]), int(t.difficulty[1])),
        ),
        optim=cfg.optim,
        improve=cfg.improve,
        reward=cfg.reward,
        search=cfg.search,
        self_label=cfg.self_label,
    )
