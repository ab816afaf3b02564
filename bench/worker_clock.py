"""Busy/wait seconds per named stage, for systems that do not run in diskgnn's pipeline."""
from __future__ import annotations


class StageClock:
    def __init__(self):
        self.busy: dict[str, float] = {}
        self.wait: dict[str, float] = {}

    def add(self, stage: str, busy: float = 0.0, wait: float = 0.0) -> None:
        self.busy[stage] = self.busy.get(stage, 0.0) + busy
        self.wait[stage] = self.wait.get(stage, 0.0) + wait

    def report(self) -> dict:
        return {s: {"busy_s": self.busy.get(s, 0.0), "wait_s": self.wait.get(s, 0.0)}
                for s in sorted(set(self.busy) | set(self.wait))}
