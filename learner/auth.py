"""Optional bearer-token authentication for the Learner service; the health service stays open for probes."""

from __future__ import annotations

import hmac

import grpc

from learner.metrics import RpcEvents

_OPEN_PREFIX = "/grpc.health.v1.Health/"


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str, metrics: RpcEvents) -> None:
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_OPEN_PREFIX):
            return continuation(handler_call_details)
        presented = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(presented.encode(), self._expected):
            return continuation(handler_call_details)
        is_push = handler_call_details.method.endswith("/PushGradients")

        def deny(request, context):
            if is_push:
                self._metrics.refused("unauthenticated")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)
