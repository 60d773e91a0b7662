"""A noisy actor cannot hurt the others: one that sends too many invalid pushes in a window is refused outright
for a cool-down, before the learner spends any work on what it sends."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from typing import Callable

WINDOW_SECONDS = 60.0
# Actor names remembered at once; the oldest is forgotten first, so made-up names cannot grow memory without bound.
MAX_TRACKED = 4096


def budget_key(actor_id: str) -> str:
    """The actor's name without the suffix each process adds (`name/3fa2c1`): a restarted actor is the same one."""
    return actor_id.rsplit("/", 1)[0]


class RefusalBudget:
    """`limit` invalid pushes per actor within WINDOW_SECONDS; one more starts a cool-down of `cooldown` seconds.
    A limit of 0 turns the budget off."""

    def __init__(self, limit: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.cooldown, self._clock = limit, cooldown, clock
        self._refusals: OrderedDict[str, deque[float]] = OrderedDict()
        self._cooling_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def refused(self, actor_id: str) -> bool:
        """Count an invalid push from this actor; True when that starts its cool-down."""
        if not self.limit or not actor_id:
            return False
        key, now = budget_key(actor_id), self._clock()
        with self._lock:
            times = self._refusals.pop(key, None) or deque()
            self._refusals[key] = times  # now the most recent
            times.append(now)
            while times and times[0] <= now - WINDOW_SECONDS:
                times.popleft()
            started = len(times) > self.limit
            if started:
                self._cooling_until[key] = now + self.cooldown
                times.clear()
                if len(self._cooling_until) > MAX_TRACKED:
                    self._cooling_until = {k: t for k, t in self._cooling_until.items() if t > now}
            while len(self._refusals) > MAX_TRACKED:
                self._refusals.popitem(last=False)
        return started

    def cooling(self, actor_id: str) -> float:
        """Seconds of cool-down this actor has left (0: none)."""
        if not self._cooling_until:
            return 0.0
        key, now = budget_key(actor_id), self._clock()
        with self._lock:
            until = self._cooling_until.get(key, 0.0)
            if until and until <= now:
                del self._cooling_until[key]
            return max(until - now, 0.0)

    def cooling_count(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(until > now for until in self._cooling_until.values())
