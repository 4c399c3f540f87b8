"""Which waiting sequences join the running batch, fairly across requests.

A sequence carries its request's `job`. A request may hold at most its share of the batch
(the slots divided among the requests running or waiting), and `reserved` slots beyond
`max_batch` only ever go to requests that don't already fill a batch: a newcomer is admitted
at the next step however large the requests already running are, and one large request alone
still gets the whole `max_batch`. Round robin over requests within those shares.
"""

from __future__ import annotations

from collections import Counter, deque

from tinystories.infer.sequence import Sequence


class Scheduler:
    def __init__(self, max_batch: int, reserved: int = 0) -> None:
        self.max_batch, self.reserved = max_batch, reserved
        self.waiting: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def drain(self) -> list[Sequence]:
        """Every waiting sequence, no longer waiting (the engine is closing)."""
        left, self.waiting = self.waiting, []
        return left

    def pick(self, running: list[Sequence]) -> list[Sequence]:
        """The waiting sequences to admit now, given those `running`."""
        self.waiting = [s for s in self.waiting if not s.cancelled]
        if not self.waiting:
            return []
        count = Counter(s.job for s in running)
        jobs = list(dict.fromkeys([*count, *(s.job for s in self.waiting)]))
        slots = self.max_batch + self.reserved
        share = min(self.max_batch, -(-slots // len(jobs)))
        queues = {j: deque(s for s in self.waiting if s.job is j) for j in jobs}
        room, picked = slots - len(running), []
        while room > 0:
            ready = [j for j in jobs if queues[j] and count[j] < share]
            if not ready:
                break
            for j in ready[:room]:
                picked.append(queues[j].popleft())
                count[j] += 1
            room = slots - len(running) - len(picked)
        chosen = {id(s) for s in picked}
        self.waiting = [s for s in self.waiting if id(s) not in chosen]
        return picked
