"""The shipped Grafana dashboard's queries, as the tests run them against a real Prometheus."""

from __future__ import annotations

import json
from typing import Iterator

from tests.processes import ROOT

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))


def panel_expressions() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, with Grafana's $__rate_interval as 1m."""
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"].replace("$__rate_interval", "1m")
