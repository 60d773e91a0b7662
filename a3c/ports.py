"""The port file: a service started on port 0 tells whoever launched it which ports it got, as one JSON object
written atomically (a reader sees the whole file or none)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_ports(path: str | Path, **ports: int) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(ports) + "\n")
    os.replace(tmp, path)


def read_ports(path: str | Path) -> dict[str, int] | None:
    """The ports a service wrote, or None while it has written none."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
