"""Checkpoint files: written atomically (write, fsync, rename; the previous one kept), read without unpickling code.

The learner writes them (and the evaluator its best-eval.pt); `a3c evaluate` and `a3c play` read the network back
out of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = 1  # the layout of what `save` is given; a reader refuses another
LATEST = "latest.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"  # the learner's, by the mean training return of 100 episodes
BEST_EVAL = "best-eval.pt"  # the evaluator's, by the mean return of a round of greedy episodes


def save(directory: str | Path, state: dict, name: str = LATEST, previous: str | None = PREVIOUS) -> Path:
    """Write `state` to directory/name atomically; the file it replaces becomes directory/previous."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    for torn in directory.glob(f".{name}.*.tmp"):  # left by a writer killed mid-write
        if torn != tmp:
            torn.unlink(missing_ok=True)
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if previous and target.exists():
        os.replace(target, directory / previous)
    os.replace(tmp, target)
    return target


def load(path: str | Path) -> dict:
    """Tensors, numbers, strings and containers only: `weights_only` refuses anything executable."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_newest(directory: str | Path) -> tuple[dict, Path] | None:
    """The newest checkpoint in `directory` that loads, or None when there is none."""
    for name in (LATEST, PREVIOUS):
        path = Path(directory) / name
        if path.exists():
            try:
                return load(path), path
            except Exception:  # a torn or foreign file: fall back to the previous one
                continue
    return None
