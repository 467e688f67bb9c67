"""CUDA-graph replay of a function of fixed buffers, one graph per key, with an eager twin
off CUDA (which is how CPU tests check the wiring around it).

Two users: a static decode step (``model.DecodeStep``: a dozen kernels per layer per token)
and a search's static simulation call (``search.cuda_graph``: some 35 small ops per walk
level, a few dozen levels per selection, eight selections, then two networks' forwards).
Launched one by one from Python, the host's launch rate bounds both on a GPU; a graph
replays them with one launch.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def _copy_into(out: Any, new: Any) -> None:
    """Copy a nested tuple of tensors ``new`` into ``out`` (same structure)."""
    if isinstance(out, torch.Tensor):
        out.copy_(new)
    elif isinstance(out, tuple):
        for o, n in zip(out, new):
            _copy_into(o, n)


class GraphReplay:
    """``graphs(key, fn, counters=obj)`` runs ``fn()``: a function with no arguments whose
    outputs are a (nested) tuple of tensors, which reads whatever varies between calls only
    from tensors that live as long as this object (the caller's fixed tables, and
    ``buffer(name, value)``, copied into before each call).

    On CUDA, per key: the first call runs ``fn`` eagerly on a side stream (warm-up: kernel
    choice, workspaces and cached constants are made outside any capture); the second
    captures it into a CUDA graph, which runs nothing, then replays it; later calls replay.
    Every graph draws on one memory pool: they run one at a time. A replay skips ``fn``'s
    Python, so the numeric attributes ``flops`` and ``calls`` of ``counters`` advance by what
    the captured call added. Under autocast the warm-up and the capture run with the
    weight-cast cache off: a cached cast would be freed when the caller's autocast region
    ends, while the graph still reads it.

    Off CUDA the same steps run eagerly: the first call runs ``fn``, the second keeps it
    (its "capture") and runs it, and later calls run the kept ``fn``, not the one they are
    given, copying its outputs into the kept call's tensors: as a graph replays what it
    captured, over the same tensors. A ``fn`` that closes over a per-call input instead of
    a buffer replays stale values here too, so a CPU test sees the mistake.
    """

    COUNTERS = ("flops", "calls")

    def __init__(self, *, cuda: bool) -> None:
        self.cuda = cuda
        self.buffers: dict[str, torch.Tensor] = {}
        self.warm: set = set()
        self.graphs: dict = {}  # key -> (graph or None, outputs, counter increments)
        self.stream = torch.cuda.Stream() if cuda else None
        self.pool = torch.cuda.graph_pool_handle() if cuda else None

    def buffer(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """The fixed tensor ``name``, holding ``value`` (made at the first call, outside any capture)."""
        b = self.buffers.get(name)
        if b is None:
            b = self.buffers[name] = value.clone()
        else:
            b.copy_(value)
        return b

    def _counters(self, obj) -> dict[str, float]:
        return {n: getattr(obj, n) for n in self.COUNTERS if isinstance(getattr(obj, n, None), (int, float))}

    def _autocast(self):
        return torch.autocast(
            "cuda",
            dtype=torch.get_autocast_dtype("cuda"),
            enabled=torch.is_autocast_enabled("cuda"),
            cache_enabled=False,
        )

    def __call__(self, key, fn: Callable[[], Any], *, counters=None) -> Any:
        before = self._counters(counters)
        if not self.cuda:
            if key not in self.warm:
                self.warm.add(key)
                return fn()
            if key not in self.graphs:
                self.graphs[key] = (fn, fn(), {})
                return self.graphs[key][1]
            kept, out, _ = self.graphs[key]
            _copy_into(out, kept())
            return out
        if key not in self.warm:
            self.warm.add(key)
            self.stream.wait_stream(torch.cuda.current_stream())
            with self._autocast(), torch.cuda.stream(self.stream):
                out = fn()
            torch.cuda.current_stream().wait_stream(self.stream)
            return out
        if key not in self.graphs:
            graph = torch.cuda.CUDAGraph()
            with self._autocast(), torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                out = fn()
            added = {n: v - before[n] for n, v in self._counters(counters).items()}
            self.graphs[key] = (graph, out, added)
        graph, out, added = self.graphs[key]
        graph.replay()
        for n, v in added.items():
            setattr(counters, n, before[n] + v)
        return out
