"""`a3c health`: the container health check, for either service (exit 0 when healthy, else one line and 1)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from a3c.errors import UserFacingError


def check_grpc(address: str, service: str, timeout: float, tls_ca: str = "") -> None:
    """The standard gRPC health service at `address` reports `service` as SERVING (over TLS, trusting the CA
    certificate in `tls_ca`, when given)."""
    import grpc  # here, not above: an actor's check under load should not pay for importing gRPC
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca:
        try:
            credentials = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
        except OSError as err:
            raise UserFacingError(f"--tls-ca: cannot read {tls_ca} ({err.strerror})") from None
        channel = grpc.secure_channel(address, credentials)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
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
