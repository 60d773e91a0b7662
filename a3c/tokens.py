"""Bearer tokens from a literal or from a file that may be rewritten while the services run (rotation).

A token file holds one token per line (blank lines and `#` comments ignored). The learner accepts every token
in its file; an actor presents the first line of its own, and the next ones in turn when the learner refuses it
(during a rotation the two files may change in either order). Each reread happens only when the file has changed
(inode, size or mtime), looked at no more than once a second, so a check per call costs nothing; Kubernetes'
Secret volumes and `a3c credentials` both replace the file by a rename, which the inode shows.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from a3c.errors import UserFacingError

log = logging.getLogger("a3c")
RECHECK_SECONDS = 1.0


def parse_tokens(text: str) -> tuple[str, ...]:
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


class TokenFileError(UserFacingError):
    """The token file cannot be read or holds no token."""


def read_token_file(path: str) -> tuple[str, ...]:
    try:
        tokens = parse_tokens(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise TokenFileError(f"cannot read the token file {path}: {getattr(err, 'strerror', None) or err}") from None
    if not tokens:
        raise TokenFileError(f"the token file {path} holds no token")
    return tokens


class Tokens:
    """The tokens in force: fixed (a literal, or none) or read from a file and reread when it changes. A file
    that becomes unreadable or empty keeps the last tokens read (a botched rotation locks nobody out) and says
    so once."""

    def __init__(self, literal: str = "", path: str = "", clock=time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: tuple[str, ...] = read_token_file(path) if path else ((literal,) if literal else ())
        self._signature = self._stat() if path else None
        self._next_check = clock() + RECHECK_SECONDS
        self._complained = False

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def current(self, look_now: bool = False) -> tuple[str, ...]:
        """Every token in force, newest (first line) first; `look_now` looks at the file at once (when a token
        was just refused) instead of waiting out the second."""
        if not self._path or not look_now and self._clock() < self._next_check:
            return self._tokens
        with self._lock:
            if look_now or self._clock() >= self._next_check:
                self._next_check = self._clock() + RECHECK_SECONDS
                signature = self._stat()
                if signature != self._signature:
                    self._reread(signature)
        return self._tokens

    def _reread(self, signature: tuple[int, int, int] | None) -> None:
        try:
            tokens = read_token_file(self._path)
        except TokenFileError as err:
            if not self._complained:
                log.warning("%s; keeping the %d token(s) read before", err, len(self._tokens))
                self._complained = True
            return
        self._signature, self._complained = signature, False
        if tokens != self._tokens:
            log.info("token file %s reread: %d token(s) in force", self._path, len(tokens))
            self._tokens = tokens

