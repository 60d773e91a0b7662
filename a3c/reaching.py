"""How a service reaches the learner (the actor and the evaluator alike): its channel, with or without TLS, the
bearer token it presents, and the wait for a learner that is not there yet."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import grpc

from a3c.errors import UserFacingError
from a3c.tokens import Tokens

log = logging.getLogger("a3c")
T = TypeVar("T")
WAIT_REPORT_SECONDS = 30.0
REFUSED_TOKEN_PAUSE = 120.0  # about a kubelet's refresh of a Secret volume
# gRPC's own reconnect backoff grows to 120 s: a learner back after a restart would wait that long for callers
# whose channel failed a few times; capped at 2 s, as the retries below are at 5 s.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                     ("grpc.max_reconnect_backoff_ms", 2000)]
# The learner is away, starting, stopping or busy: worth trying again after a pause.
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class LearnerUnreachable(UserFacingError):
    """The learner did not answer in time."""


class LearnerRefused(UserFacingError):
    """The learner answered, but not with what the caller needs (a wrong token, say)."""


def channel_credentials(tls_ca: str) -> grpc.ChannelCredentials | None:
    """TLS trusting the CA certificate in `tls_ca`; None (plain text) when it is empty."""
    return grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()) if tls_ca else None


def open_channel(address: str, credentials: grpc.ChannelCredentials | None,
                 options: list[tuple[str, int]] | None = None) -> grpc.Channel:
    options = [*(options or []), *RECONNECT_OPTIONS]
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


class TokenPresenter:
    """Which of a token file's tokens to present: the first (a rotated file is picked up on the next call), unless
    the learner refused it lately; then the next. A rotation reaches the two sides in either order (on Kubernetes
    the kubelet refreshes each pod's Secret in its own time), so a refused token is passed over for a while, not
    forgotten; when all were refused, each gets one more try."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens
        self._presenting = ""
        self._skip_until: dict[str, float] = {}  # tokens the learner refused lately, presented again after that
        self._fresh_start_used = False  # every token refused, each tried once more since the last answer

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The call metadata that presents the token of the moment (None: there is none)."""
        tokens = self._tokens.current()
        now = time.monotonic()
        self._presenting = next((t for t in tokens if self._skip_until.get(t, 0) <= now), tokens[0] if tokens else "")
        return (("authorization", f"Bearer {self._presenting}"),) if self._presenting else None

    def try_another(self) -> bool:
        """After UNAUTHENTICATED: whether another token is worth presenting."""
        now = time.monotonic()
        self._skip_until[self._presenting] = now + REFUSED_TOKEN_PAUSE
        if any(self._skip_until.get(t, 0) <= now for t in self._tokens.current(look_now=True)):
            return True
        if self._fresh_start_used:
            return False
        self._fresh_start_used = True  # with every token passed over, metadata() presents the file's first again
        return True

    def answered(self) -> None:
        """The learner answered a call: a later refusal of every token may try each once more."""
        self._fresh_start_used = False

    def refused(self, err: grpc.RpcError) -> bool:
        """Whether `err` refused the token and another is worth presenting (`wait_for_learner`'s retry test)."""
        return err.code() == grpc.StatusCode.UNAUTHENTICATED and self.try_another()


def worth_another_try(err: grpc.RpcError, tokens: TokenPresenter) -> bool:
    """What a failed call means to a service's loop: True when another token is worth presenting at once, False
    when the learner is away (reconnect and go on); LearnerRefused, which ends the service, for anything else."""
    if tokens.refused(err):
        return True
    if err.code() not in TRANSIENT:
        raise LearnerRefused(f"the learner refused a call: {err.code().name}: {err.details()}") from None
    return False


def wait_for_learner(attempt: Callable[[float], T], address: str, timeout: float | None, stop: threading.Event,
                     try_again_at_once: Callable[[grpc.RpcError], bool] = lambda err: False) -> T | None:
    """`attempt(seconds)` (a call made with wait_for_ready) until it answers, for up to `timeout` seconds (None: as
    long as it takes); None if `stop` is set first. Transient failures are retried with exponential backoff and
    jitter, capped at 5 s, the wait logged when it starts and every half minute after; an error
    `try_again_at_once` accepts (a refused token when another can be presented) is retried at once; any other
    is LearnerRefused, and running out of time LearnerUnreachable."""
    started = time.monotonic()
    deadline = started + timeout if timeout is not None else math.inf
    delay = 0.25
    next_report = started
    while True:
        if stop.is_set():
            return None
        try:
            return attempt(min(max(deadline - time.monotonic(), 0.01), 2.0))  # short, so `stop` is noticed
        except grpc.RpcError as err:
            if try_again_at_once(err):
                continue
            if err.code() not in TRANSIENT:
                raise LearnerRefused(f"the learner at {address} refused: {err.code().name}: {err.details()}") \
                    from None
            reason = err.code().name
        now = time.monotonic()
        if now >= deadline:
            raise LearnerUnreachable(f"no learner answered at {address} within {timeout:g}s")
        if now >= next_report:
            log.info("waiting for the learner at %s (%s, %.0f s so far)", address, reason, now - started)
            next_report = now + WAIT_REPORT_SECONDS
        stop.wait(min(random.uniform(0.5, 1.0) * delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 5.0)
