"""Every error knowngood reports without a traceback: one base, one class per area.

The CLI catches ``KnowngoodError`` and prints its message; nothing matches errors by name.
"""

from __future__ import annotations


class KnowngoodError(Exception):
    """Base of every error the CLI reports without a traceback."""


def reported(errors: tuple[type[BaseException], ...], fn, *args, **kwargs):
    """fn(*args, **kwargs), any of ``errors`` raised again as a KnowngoodError with its message
    (the collection's refusals, printed by the CLI without a traceback)."""
    try:
        return fn(*args, **kwargs)
    except errors as exc:
        raise KnowngoodError(str(exc)) from None


class LabError(KnowngoodError):
    """A lab service could not be brought to the requested state (the message may end in a
    log tail worth showing as-is)."""


class FaultError(LabError):
    """A failure cannot be injected as asked; the message says why."""


class FlagServiceError(LabError):
    """A state file or token file the flag service cannot start with."""


class ConfigInvalid(LabError, ValueError):
    """app.conf does not parse or holds a value the app server refuses."""


class DrillError(KnowngoodError):
    """A drill cannot run or report; the message says why."""


class AwxError(KnowngoodError):
    """The AWX definitions are inconsistent; the message names what and where."""
