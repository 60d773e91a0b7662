"""The shipped Grafana dashboard's queries, as the tests run them against a real Prometheus."""

from __future__ import annotations

import json
from typing import Iterator
from urllib.parse import urlencode

from tests.processes import ROOT, http_get

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))


def panel_expressions() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, with Grafana's $__rate_interval as 1m."""
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"].replace("$__rate_interval", "1m")


def prometheus_query(web: str, expr: str) -> list:
    """The result of an instant query to the Prometheus at `web` (HOST:PORT)."""
    reply = json.loads(http_get(f"http://{web}/api/v1/query?" + urlencode({"query": expr})))
    assert reply["status"] == "success", reply
    return reply["data"]["result"]
