"""Storage every node sees: on a Ray cluster of more than one node, a sweep or a
``runtime=ray`` run first checks that each node can read and write ``logdir``.

A run's checkpoints and logs are written by whichever node runs it (a sweep's task, a
learner actor), and read again by whichever node resumes it after a fault: on a disk of
one node's own, a run resumed elsewhere would start from nothing, and its logs would be
split over machines. The check writes a token under ``logdir`` from the driver, then runs
one probe task pinned to each alive node: it reads the token at ``logdir`` as that node
resolves it (a relative ``logdir`` resolves against the node's working directory, as the
runs' writes would) and writes its own file beside it, which the driver must read back.
Any node that fails is a ``UserError`` (the CLI: one line, exit 2) naming the node and
the path, before any run starts.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Optional

from .errors import UserError

PROBE_DIR = ".emergent-storage-probe"


def probe(logdir: str, token: str, node_id: str) -> Optional[str]:
    """On one node: None when it reads the driver's file ``token`` (holding its own name)
    under ``logdir`` and writes its own file there; otherwise why not (in a few words, with
    the path as this node sees it)."""
    where = Path(logdir).absolute() / PROBE_DIR
    try:
        seen = (where / token).read_text()
    except OSError as e:
        return f"cannot read {where / token} ({e.strerror or type(e).__name__})"
    if seen != token:
        return f"reads another file at {where / token}"
    try:
        (where / f"{token}.{node_id}").write_text(token)
    except OSError as e:
        return f"cannot write in {where} ({e.strerror or type(e).__name__})"
    return None


def check_shared_storage(ray, logdir: str, timeout_s: float = 300.0) -> None:
    """Raise ``UserError`` unless every alive node of the cluster reads and writes
    ``logdir`` as this process does. One node: nothing to check."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = uuid.uuid4().hex
    where = Path(logdir).absolute() / PROBE_DIR
    where.mkdir(parents=True, exist_ok=True)
    (where / name).write_text(name)
    task = ray.remote(num_cpus=0, max_retries=0)(probe)
    try:
        refs = {
            n["NodeID"]: task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(logdir, name, n["NodeID"])
            for n in nodes
        }
        for node in nodes:
            why = ray.get(refs[node["NodeID"]], timeout=timeout_s)
            mine = where / f"{name}.{node['NodeID']}"
            if why is None and not (mine.is_file() and mine.read_text() == name):
                why = f"writes where this machine does not read ({mine} is missing)"
            if why is not None:
                raise UserError(
                    f"logdir {logdir} is not storage every node sees: node {node['NodeManagerAddress']} "
                    f"({node['NodeID'][:12]}) {why}; give logdir on a shared filesystem (NFS) or a "
                    f"mounted bucket, as an absolute path"
                )
    finally:
        for f in where.glob(f"{name}*"):
            f.unlink(missing_ok=True)
        if not any(where.iterdir()):
            shutil.rmtree(where, ignore_errors=True)
