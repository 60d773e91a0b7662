"""`a3c health`: the container health check, for either service (exit 0 when healthy, else one line and 1)."""

from __future__ import annotations

import urllib.error
import urllib.request

from a3c.errors import UserFacingError


def check_grpc(address: str, service: str, timeout: float) -> None:
    """The standard gRPC health service at `address` reports `service` as SERVING."""
    import grpc  # here, not above: an actor's check under load should not pay for importing gRPC
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError as err:
            raise UserFacingError(f"health check of {address} failed: {err.code().name}") from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise UserFacingError(f"{address} reports {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")


def check_http(url: str, timeout: float) -> None:
    """An HTTP endpoint (an actor's /metrics) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as err:
        raise UserFacingError(f"health check of {url} failed: {getattr(err, 'reason', err)}") from None
    if status != 200:
        raise UserFacingError(f"{url} answered HTTP {status}")
