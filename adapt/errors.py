"""The one base class of the errors adapt raises about what a user gave it.

Every error about a config, data file, checkpoint, adapter, Hugging Face config or
hyperparameter derives from :class:`AdaptError` (and, for backwards compatibility, from the
builtin it used to be: ``ValueError`` mostly). Its message names what was wrong and how to fix
it. The entry points (:mod:`adapt.cli`, through :mod:`adapt.harness.command_line`) print
such an error as one line, ``error: ...``, and exit with status 2 and no traceback; any other
exception is a bug in adapt and keeps its traceback.
"""

from __future__ import annotations

USAGE_EXIT_CODE = 2  # adapt's own errors: bad config, data, checkpoint, flags ...
PREEMPTED_EXIT_CODE = 75  # SIGTERM: checkpointed and stopped; run the same command to resume


class AdaptError(Exception):
    """Something the user gave adapt is wrong; the message says what and how to fix it."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages joined with ``; ``)."""
    text = ""
    for part in (line.strip() for line in str(error).splitlines()):
        if part:
            text = (
                part if not text else f"{text} {part}" if text.endswith(":") else f"{text}; {part}"
            )
    return text or type(error).__name__


__all__ = ["PREEMPTED_EXIT_CODE", "USAGE_EXIT_CODE", "AdaptError", "one_line"]
