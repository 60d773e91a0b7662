"""Bearer-token authentication for the Learner service; the health service stays open for probes."""

from __future__ import annotations

import hmac

import grpc

from a3c.tokens import Tokens
from learner.metrics import RpcEvents

_OPEN_PREFIX = "/grpc.health.v1.Health/"


def _matches(given: bytes, tokens: tuple[str, ...]) -> bool:
    # Every token is compared, so the time taken does not tell which one came close.
    return sum(hmac.compare_digest(given, f"Bearer {token}".encode()) for token in tokens) > 0


def accepted(presented: str, tokens: Tokens) -> bool:
    """`presented` (an authorization header) carries one of the tokens in force, compared in constant time. A miss
    looks at the token file at once: an actor may present a rotated token within the second after it changed."""
    given = presented.encode()
    return _matches(given, tokens.current()) or _matches(given, tokens.current(look_now=True))


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: Tokens, metrics: RpcEvents) -> None:
        self._tokens = tokens
        self._metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_OPEN_PREFIX):
            return continuation(handler_call_details)
        presented = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if accepted(presented, self._tokens):
            return continuation(handler_call_details)
        is_push = handler_call_details.method.endswith("/PushGradients")

        def deny(request, context):
            if is_push:
                self._metrics.refused("unauthenticated")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)
