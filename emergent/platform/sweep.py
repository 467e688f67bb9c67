"""``emergent sweep FILE [key=value ...]``: a grid of runs on Ray's own scheduling.

A sweep file names a base config, an experiment and a grid; every combination of the grid's
values is one run (a *cell*), written to the usual ``<logdir>/<experiment>/<run name>``
with a run name that spells its cell, so TensorBoard overlays them::

    experiment: countdown_compare
    base: configs/countdown.yaml          # a config file, or a mapping of keys
    grid:                                 # key -> values; every combination is a run
      train.method: [supervised, expert_iteration]
      model.d_model: [64, 128]
      seed: [0, 1, 2]
    per_method:                           # keys only that method reads (others refuse them)
      supervised: {train.batch_size: 64}
      expert_iteration: {improve.samples: 4}
    flop_budget: 2.0e13                   # train.flop_budget of every compared run (optional)
    warm_start: {train.steps: 3000}       # optional: self-improvement runs start from a
                                          # supervised run of the same cell (method aside),
                                          # trained once and shared
    skip:                                 # optional: combinations left out, each a partial
      - {train.method: expert_iteration, model.d_model: 64}   # cell (every key it names matches)
    resources: {cpus: 1, gpus: 0}         # per run

Every cell's config is built and validated before any run starts: one bad cell exits 2,
naming it. Runs are Ray tasks with the stated resources (a local Ray sized to this
machine, or the cluster a ``ray job submit`` runs in); a self-improvement run's task takes
its warm start's task as an argument, so Ray starts it only once that is done. A run with
``runtime=ray`` (a learner actor and trace workers of its own) gets a placement group with
one bundle for its task and learner (``resources``) and one per trace worker
(``ray.worker_cpus/gpus``): Ray reserves its whole footprint before it starts, so runs
never deadlock holding half of what they need. Running
the same command again skips finished runs (``<run>/done.json``) and resumes unfinished
ones from their checkpoints. A run lost with its worker or node (a killed raylet, a
preempted machine) is run again elsewhere, up to ``SYSTEM_RETRIES`` times, resuming from its
last checkpoint, so ``logdir`` must be storage every node sees. A run that fails in its own
code is recorded (``<run>/failed.txt``), not retried, while the others go on, and the sweep
exits 1 at the end, naming it.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf

from .checkpoint import DONE, FAILED, LAST, STARTED, SWEEP_FILE, atomic_write
from .config import Config, ConfigError, flatten, load_config, load_yaml, to_yaml

SWEEP_KEYS = {"experiment", "base", "grid", "per_method", "flop_budget", "warm_start", "resources", "skip"}
WARM = "supervised"  # the method a shared warm start trains
SYSTEM_RETRIES = 3  # times a run lost with its worker or node is run again (from its checkpoint)


@dataclass(frozen=True)
class Cell:
    name: str  # run name: the cell's grid values
    values: dict  # grid key -> value
    overrides: tuple[str, ...]  # on top of the base, in order
    warm_start: Optional[str] = None  # the warm-start cell this run starts from
    role: str = "run"  # "run", or "warm_start": trained for other runs to start from


@dataclass(frozen=True)
class Sweep:
    experiment: str
    base: Optional[str]  # a config file
    base_keys: tuple[str, ...]  # inline base keys as overrides
    cells: tuple[Cell, ...]  # warm starts first
    cpus: float
    gpus: float
    logdir: str


def _value(v: Any) -> str:
    """A dotlist value as the command line would write it."""
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return "null" if v is None else str(v)


def _dotlist(mapping: Any, where: str) -> list[str]:
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        raise ConfigError(f"sweep: {where} must be a mapping of config keys")
    return [f"{k}={_value(v)}" for k, v in flatten(mapping).items()]


def _name(values: dict) -> str:
    """``{train.method: expert_iteration, model.d_model: 64, seed: 1}`` -> ``expert_iteration_d_model64_seed1``."""
    parts = [str(v) if k == "train.method" else f"{k.split('.')[-1]}{_value(v)}" for k, v in values.items()]
    return "_".join(parts).replace("/", "-").replace(" ", "") or "run"


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Sweep, dict[str, Config]]:
    """Parse a sweep file and build every cell's config; any problem is a ConfigError
    naming the cell and the key, raised before anything runs."""
    spec = OmegaConf.to_container(load_yaml(path), resolve=True)
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"sweep {path}: unknown key(s) {sorted(unknown)}; a sweep file holds {sorted(SWEEP_KEYS)}")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"sweep {path}: grid must map config keys to non-empty lists of values")
    grid = flatten(grid) if any(isinstance(v, dict) for v in grid.values()) else grid
    experiment = spec.get("experiment") or Path(path).stem
    base = spec.get("base")
    base_file, base_keys = (base, []) if isinstance(base, str) or base is None else (None, _dotlist(base, "base"))
    per_method = {m: _dotlist(keys, f"per_method.{m}") for m, keys in (spec.get("per_method") or {}).items()}
    budget = spec.get("flop_budget")
    warm = spec.get("warm_start")
    resources = spec.get("resources") or {}
    skip = spec.get("skip") or []
    if not isinstance(skip, list) or not all(isinstance(x, dict) and x for x in skip):
        raise ConfigError(f"sweep {path}: skip must be a list of partial cells (mappings of grid keys to values)")
    skip = [flatten(x) for x in skip]
    for partial in skip:
        for k, v in partial.items():
            if k not in grid or v not in grid[k]:
                raise ConfigError(f"sweep {path}: skip entry {partial} names {k}={v!r}, which is not in the grid")
    shared = [*base_keys, f"experiment={experiment}"]
    common = [*(["train.flop_budget=" + _value(budget)] if budget is not None else [])]

    def method_of(values: dict) -> str:
        if "train.method" in values:
            return str(values["train.method"])
        return load_config(base_file, [*shared, *overrides]).train.method

    cells, configs, warm_cells = [], {}, {}
    warm_keys = set(flatten(warm)) if isinstance(warm, dict) else set()
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        if any(all(values[k] == v for k, v in partial.items()) for partial in skip):
            continue
        name = _name(values)
        cell_over = [f"{k}={_value(v)}" for k, v in values.items()]
        try:
            method = method_of(values)
        except ConfigError as e:
            raise ConfigError(f"sweep cell {name}: {e}") from None
        warm_name = None
        if warm is not None and method != WARM:
            # the warm start's own cell: the grid values it does not set itself (cells that
            # differ only in a key the warm_start block sets share one warm start)
            others = {k: v for k, v in values.items() if k != "train.method" and k not in warm_keys}
            warm_name = "warm_start_" + _name(others) if others else "warm_start"
            if warm_name not in warm_cells:
                warm_over = [
                    *(f"{k}={_value(v)}" for k, v in others.items()),
                    f"train.method={WARM}",
                    *per_method.get(WARM, []),
                    *_dotlist(warm, "warm_start"),
                ]
                warm_cells[warm_name] = Cell(warm_name, others, tuple(warm_over), role="warm_start")
        cells.append(Cell(name, values, tuple([*cell_over, *per_method.get(method, []), *common]), warm_name))
    for cell in [*warm_cells.values(), *cells]:
        # a warm start's checkpoint does not exist yet: the cell is checked without it
        over = [*shared, *cell.overrides, *overrides, f"run_name={cell.name}", "progress=false"]
        try:
            configs[cell.name] = load_config(base_file, over)
        except ConfigError as e:
            raise ConfigError(f"sweep cell {cell.name}: {e}") from None
    if len(configs) != len(warm_cells) + len(cells):
        raise ConfigError(f"sweep {path}: two cells share a run name; grid values must differ in their names")
    cpus, gpus = float(resources.get("cpus", 1)), float(resources.get("gpus", 0))
    if cpus <= 0 or gpus < 0:
        raise ConfigError(f"sweep {path}: resources.cpus must be > 0 and resources.gpus >= 0")
    for name, cfg in configs.items():
        if cfg.runtime == "ray":  # the learner shares its task's bundle: it must fit there
            if cfg.ray.learner_cpus > cpus or (cfg.ray.learner_gpus or 0) > gpus:
                raise ConfigError(
                    f"sweep cell {name}: ray.learner_cpus/learner_gpus must fit in the run's "
                    f"resources (cpus={cpus}, gpus={gpus})"
                )
            cfg.ray.learner_gpus = gpus if cfg.ray.learner_gpus is None else cfg.ray.learner_gpus
    logdir = next(iter(configs.values())).logdir
    sweep = Sweep(experiment, base_file, tuple(base_keys), (*warm_cells.values(), *cells), cpus, gpus, logdir)
    return sweep, configs


def bundles(cfg: Config, cpus: float, gpus: float) -> list[dict[str, float]]:
    """The placement-group bundles of a ``runtime=ray`` run: its task and learner, then one
    per trace worker."""

    def bundle(c: float, g: float) -> dict[str, float]:
        return {k: v for k, v in (("CPU", c), ("GPU", g)) if v > 0}

    worker = bundle(cfg.ray.worker_cpus, cfg.ray.worker_gpus)
    return [bundle(cpus, gpus), *([worker] * cfg.ray.workers if worker else [])]


def run_cell(cfg_yaml: str, run_dir: str, threads: int, warm_start: Optional[dict] = None) -> dict:
    """One run, in a Ray worker: resumes from a checkpoint when one exists, records
    ``done.json`` (or ``failed.txt``) and returns its final scalars (or its error)."""
    import torch

    from .local import train_local

    run = Path(run_dir)
    if warm_start is not None and "error" in warm_start:
        return {"error": f"its warm start failed: {warm_start['error']}"}
    try:
        torch.set_num_threads(max(1, threads))
        over = ["resume=true"] if (run / LAST).exists() else []
        if warm_start is not None:
            over.append(f"improve.init_from={warm_start['checkpoint']}")
        cfg = load_config(base=cfg_yaml, overrides=over)
        run.mkdir(parents=True, exist_ok=True)
        (run / STARTED).touch()
        (run / FAILED).unlink(missing_ok=True)
        if cfg.runtime == "ray":  # inside this run's placement group: its actors land there too
            from .ray_runtime import train_ray

            final = train_ray(cfg, check_storage=False)  # the sweep checked its logdir
        else:
            final = train_local(cfg)
        out = {"final": final, "checkpoint": str(run / LAST)}
        atomic_write(run / DONE, lambda f: f.write(json.dumps(out, indent=1).encode()))
        return out
    except Exception as e:  # recorded; the other runs go on
        msg = f"{type(e).__name__}: {e}"
        run.mkdir(parents=True, exist_ok=True)
        atomic_write(run / FAILED, lambda f: f.write((msg + "\n\n" + traceback.format_exc()).encode()))
        return {"error": msg}


def _progress(sweep: Sweep, configs: dict[str, Config], failed: set[str]) -> str:
    state = {"done": 0, "running": 0, "failed": 0, "pending": 0}
    for cell in sweep.cells:
        run = configs[cell.name].run_dir
        if cell.name in failed:
            state["failed"] += 1
        elif (run / DONE).exists():
            state["done"] += 1
        elif (run / STARTED).exists():
            state["running"] += 1
        else:
            state["pending"] += 1
    return f"sweep {sweep.experiment}: " + ", ".join(f"{v} {k}" for k, v in state.items())


def run_sweep(path: str | Path, overrides: Sequence[str] = ()) -> int:
    """Validate every cell, then run the unfinished ones as Ray tasks. Returns the exit code."""
    sweep, configs = load_sweep(path, overrides)
    import ray  # after validation: a bad sweep costs no Ray start

    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            log_to_driver=False,
            include_dashboard=any(c.ray.dashboard for c in configs.values()),
        )
    from .storage import check_shared_storage

    check_shared_storage(ray, sweep.logdir)  # every node must read and write it: before any run starts
    root = Path(sweep.logdir) / sweep.experiment
    listing = {
        "experiment": sweep.experiment,
        "cells": [
            {"name": c.name, "values": c.values, "role": c.role, "warm_start": c.warm_start} for c in sweep.cells
        ],
    }
    atomic_write(
        root / SWEEP_FILE, lambda f: f.write(json.dumps(listing, indent=1).encode())
    )  # `emergent report` reads it
    for cell in sweep.cells:  # an unfinished run (failed, or killed) counts as pending until it starts again
        if not (configs[cell.name].run_dir / DONE).exists():
            (configs[cell.name].run_dir / STARTED).unlink(missing_ok=True)
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # A run whose worker or node is lost is run again (Ray retries a task on a system
    # failure, never on an exception: run_cell records those as failures) and resumes from
    # its last checkpoint; the resumed run hides the events the lost one wrote past it.
    task = ray.remote(max_retries=SYSTEM_RETRIES)(run_cell)
    threads = max(1, int(sweep.cpus))
    groups: dict[str, Any] = {}  # cell name -> its placement group (runtime=ray runs)

    def submit(cfg: Config, warm):
        if cfg.runtime != "ray":
            return task.options(num_cpus=sweep.cpus, num_gpus=sweep.gpus).remote(
                to_yaml(cfg), str(cfg.run_dir), threads, warm
            )
        pg = groups[cfg.run_name] = placement_group(bundles(cfg, sweep.cpus, sweep.gpus), strategy="PACK")
        strategy = PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        )
        # the task only drives: its bundle's CPUs and GPUs are the learner actor's
        return task.options(num_cpus=0, num_gpus=0, scheduling_strategy=strategy).remote(
            to_yaml(cfg), str(cfg.run_dir), threads, warm
        )

    refs: dict[str, Any] = {}  # cell name -> ObjectRef, or the done record of a finished run
    skipped = 0
    for cell in sweep.cells:  # warm starts come first, so their refs exist for their dependents
        cfg = configs[cell.name]
        done = cfg.run_dir / DONE
        if done.exists():
            refs[cell.name] = json.loads(done.read_text())
            skipped += 1
            continue
        warm = refs.get(cell.warm_start) if cell.warm_start else None
        refs[cell.name] = submit(cfg, warm)
    print(
        f"sweep {sweep.experiment}: {len(sweep.cells)} runs, {skipped} already finished (skipped), "
        f"logs under {Path(sweep.logdir) / sweep.experiment}",
        flush=True,
    )
    pending = {ref: name for name, ref in refs.items() if isinstance(ref, ray.ObjectRef)}
    failed: dict[str, str] = {}
    last, printed = "", 0.0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=10.0)
        for ref in ready:
            name = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:  # lost more often than Ray retries it (or its warm start was)
                result = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
                lost = configs[name].run_dir
                lost.mkdir(parents=True, exist_ok=True)
                error = result["error"].encode()
                atomic_write(lost / FAILED, lambda f, error=error: f.write(error))
            if name in groups:
                remove_placement_group(groups.pop(name))
            if "error" in result:
                failed[name] = result["error"]
        line = _progress(sweep, configs, set(failed))
        if line != last or time.time() - printed >= 60:  # a change at once; else once a minute
            print(line, time.strftime("%H:%M:%S"), flush=True)
            last, printed = line, time.time()
    for name, error in failed.items():
        print(f"sweep: run {name} failed: {error} (see {configs[name].run_dir / FAILED})", flush=True)
    if failed:
        print(
            f"sweep {sweep.experiment}: {len(failed)} of {len(sweep.cells)} runs failed: {sorted(failed)}", flush=True
        )
        return 1
    print(f"sweep {sweep.experiment}: all {len(sweep.cells)} runs finished", flush=True)
    return 0
