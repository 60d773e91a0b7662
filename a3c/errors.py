"""The one error type the CLI prints as a single line instead of a traceback."""


class UserFacingError(Exception):
    """Something the user can fix (a bad setting, an unreachable learner); the message is the whole story."""
