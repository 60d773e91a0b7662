"""The port file: a service started on port 0 tells whoever launched it which ports it got, as one JSON object
written atomically (a reader sees the whole file or none)."""

from __future__ import annotations

import json
from pathlib import Path

from a3c.files import replace_file


def write_ports(path: str | Path, **ports: int) -> None:
    replace_file(path, json.dumps(ports) + "\n")


def read_ports(path: str | Path) -> dict[str, int] | None:
    """The ports a service wrote, or None while it has written none."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
