"""What the benchmark reads off a running system: /metrics endpoints (prometheus_client's parser) and the /proc
accounting of a process's children (the machine itself: a3c/cpu.py)."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int, host: str = "127.0.0.1") -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics endpoint, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def quantile(before: dict, after: dict, name: str, labels: dict, q: float) -> float | None:
    """The q-quantile of a histogram's observations between two scrapes (linear within a bucket)."""
    buckets = []
    for (sample, sample_labels), value in after.items():
        found = dict(sample_labels)
        if sample != f"{name}_bucket" or any(found.get(k) != v for k, v in labels.items()):
            continue
        bound = float(found["le"])
        buckets.append((bound, value - before.get((sample, sample_labels), 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def total(scraped: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in scraped.items()
               if n == name and all(dict(ls).get(k) == val for k, val in labels.items()))


def children_stats(pid: int) -> dict[int, list[str]]:
    """The /proc stat fields (after the name) of a process's children, by pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found[int(stat.parent.name)] = fields
    return found


def children_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's children so far (a learner's gRPC front processes), from /proc."""
    ticks = sum(int(fields[11]) + int(fields[12]) for fields in children_stats(pid).values())
    return ticks / os.sysconf("SC_CLK_TCK")


def private_memory_by_service(pid: int) -> dict[str, list[float]]:
    """Anonymous resident memory (MB) of the learner and actors that `a3c train` (pid) runs: what each process
    holds itself, without the library pages it maps (libtorch's alone are 100-190 MB of an actor's resident
    memory, shared by every process on the machine, and more or fewer of them are mapped depending on what the
    page cache holds)."""
    found: dict[str, list[float]] = {"learner": [], "actor": []}
    for child in children_stats(pid):
        try:
            args = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        service = args[args.index("apps") + 1] if "apps" in args[:-1] else None
        anon = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), None)
        if service in found and anon is not None:
            found[service].append(anon / 1024)
    return found
