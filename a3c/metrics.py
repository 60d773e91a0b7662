"""What the learner's and the actors' Prometheus endpoints have in common."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server
from prometheus_client.process_collector import ProcessCollector

from a3c.errors import UserFacingError

# Covers Pong (-21..21) and CartPole (up to 500) alike.
RETURN_BUCKETS = (-21, -20, -18, -15, -10, -5, 0, 5, 10, 15, 18, 20, 21, 50, 100, 150, 195, 300, 400, 500)
# Versions behind: 0 is perfectly on-policy.
LAG_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def new_registry() -> CollectorRegistry:
    """A registry of its own (so tests and processes never share one), with process CPU and memory."""
    disable_created_metrics()  # the *_created series only double every counter's size here
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> tuple[object, int]:
    """Serve /metrics; returns the server and its bound port (port 0 picks a free one)."""
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as err:
        raise UserFacingError(f"cannot serve metrics on {addr}:{port}: {err.strerror}") from None
    return server, server.server_port
