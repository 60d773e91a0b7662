"""The gRPC server of the learner, the same whether its own process serves or each of its front processes does."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from a3c.config import LearnerConfig
from a3c.tokens import Tokens
from a3c.wire import channel_options
from learner.auth import TokenAuthInterceptor
from learner.metrics import RpcEvents, RpcMetricsInterceptor
from learner.servicer import add_to_server
from proto import a3c_pb2_grpc as pb_grpc


def bound_server(config: LearnerConfig, servicer: pb_grpc.LearnerServicer, health_servicer: health.HealthServicer,
                 events: RpcEvents, max_message_bytes: int, address: str,
                 share_port: bool) -> tuple[grpc.Server, int]:
    """A server with the Learner and health services (token and TLS as configured), bound to `address` but not
    started, and its port: 0 when it cannot listen there. Only fronts share their port (SO_REUSEPORT); without
    that a second learner on a taken port fails instead of quietly taking half of its calls."""
    interceptors = [RpcMetricsInterceptor(events)]
    tokens = Tokens(config.auth_token, config.auth_token_file)
    if tokens.required:
        interceptors.append(TokenAuthInterceptor(tokens, events))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers), interceptors=interceptors,
                         maximum_concurrent_rpcs=config.max_concurrent_rpcs,
                         options=channel_options(max_message_bytes) + [("grpc.so_reuseport", int(share_port))])
    add_to_server(servicer, server, events)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        if config.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])
            return server, server.add_secure_port(address, credentials)
        return server, server.add_insecure_port(address)
    except RuntimeError:
        return server, 0
