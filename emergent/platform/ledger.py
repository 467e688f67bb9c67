"""The FLOP ledger: every FLOP a method spends, by part, cumulative over the run."""

from __future__ import annotations

from emergent import tags

PARTS = (*tags.LEDGER_PARTS, tags.WARM_START)


class FlopLedger:
    def __init__(self) -> None:
        self.parts: dict[str, float] = {p: 0.0 for p in PARTS}

    def add(self, part: str, flops: float) -> None:
        if part not in self.parts:
            raise KeyError(f"unknown ledger part {part!r}; parts are {list(self.parts)}")
        self.parts[part] += float(flops)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def scalars(self) -> dict[str, float]:
        out = {tags.compute_tag(p): v for p, v in self.parts.items()}
        out[tags.COMPUTE_TOTAL_FLOPS] = self.total
        return out

    def state_dict(self) -> dict:
        return dict(self.parts)

    def load_state_dict(self, state: dict) -> None:
        self.parts = {p: float(state.get(p, 0.0)) for p in set(PARTS) | set(state)}
