"""What went wrong, told apart: one mapping from an exception to what the app,
the CLI and the batch runner say about it.

- ``InputError`` (a ValueError): the user's input was refused — a request value
  out of range, an environment setting, an unreadable PLY, an output folder that
  is not ours. Its message names the problem and the fix.
- Everything else that escapes a run is ours: an internal error, logged with its
  traceback and reported with a short message.

    failure(exc, request) -> Failure(title, message, expected, exit_code)
"""
from __future__ import annotations

import sys
import traceback


class InputError(ValueError):
    """The user's input was refused; the message names the problem and the fix."""


class RequestError(InputError):
    """A request parameter is out of range or malformed; the message says which and why."""


class Failure(Exception):
    """A run could not be done: ``title`` and ``message`` for people;
    ``expected`` is False for bugs (their traceback was logged); ``exit_code``
    for the command line (2 input, 3 model unavailable, 4 stopped on a
    non-finite gradient, 5 out of memory, 1 internal)."""

    def __init__(self, title: str, message: str, expected: bool = True, exit_code: int = 1):
        super().__init__(message)
        self.title, self.message, self.expected, self.exit_code = title, message, expected, exit_code


def failure(exc: BaseException, request=None) -> Failure:
    """The Failure of anything a run (or its preparation) raised; ``request``
    (a ``cfd.request.Request``, optional) words the out-of-memory advice."""
    import torch

    from .distill import NonFiniteGradient
    from .guidance.base import GuidanceUnavailable

    if isinstance(exc, Failure):
        return exc
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower() \
            or "can't allocate memory" in text.lower():
        return _out_of_memory(request)
    if isinstance(exc, GuidanceUnavailable):
        return Failure("Model unavailable", text, exit_code=3)   # the text names the model and the fix
    if isinstance(exc, InputError):
        return Failure("Invalid input", text, exit_code=2)
    if isinstance(exc, NonFiniteGradient):
        return Failure("Run stopped", f"{text} Nothing was saved.", exit_code=4)
    traceback.print_exception(exc, file=sys.stderr)  # a bug: keep its traceback in the log
    return Failure("Internal error", f"The run failed ({type(exc).__name__}: {text}); nothing was saved. "
                   "An internal error, not your input: its traceback is in the log.", expected=False)


def _out_of_memory(request) -> Failure:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    res = request.res if request else None
    lower = request.lower_res() if request else 16
    return Failure("Out of memory", f"Out of memory at res={res}. Try a lower resolution (e.g. res={lower}) "
                   "or fewer seeds/views; nothing was saved.", exit_code=5)
