"""What went wrong, told apart: one mapping from an exception to what the app,
the CLI and the batch runner say about it.

- ``InputError`` (a ValueError): the user's input was refused — a request value
  out of range, an environment setting, an unreadable PLY, an output folder that
  is not ours. Its message names the problem and the fix.
- Everything else that escapes a run is ours: an internal error, logged with its
  traceback under a short incident id and reported to people with that id only
  (its text may name files and internals; ``Failure.detail`` keeps it for the
  command line, whose user is the operator).

Told apart by type first: a refused input whose text mentions memory is still a
refused input; only an exception that is not classified by its type is read for
the allocator's out-of-memory words.

    failure(exc, request) -> Failure(title, message, expected, exit_code)

The exceptions that several layers raise are defined here (``GuidanceUnavailable``
from the backends, ``NonFiniteGradient`` from the distillation loop,
``WorkerFailed`` from the worker pool), so this module imports no other cfd module.
"""
from __future__ import annotations

import errno
import sys
import traceback
import uuid


class InputError(ValueError):
    """The user's input was refused; the message names the problem and the fix."""


class RequestError(InputError):
    """A request parameter is out of range or malformed; the message says which and why."""


class GuidanceUnavailable(RuntimeError):
    """A guidance backend cannot be built here (e.g. missing weights); the
    message says what is missing and how to fix it (``cfd.guidance``)."""


class NonFiniteGradient(RuntimeError):
    """The gradient stayed non-finite (NaN/Inf) for too many steps in a row (``cfd.distill``)."""


class WorkerFailed(RuntimeError):
    """A worker process running part of a request died, hung or broke its
    protocol (``cfd.workers``); the message says which and how."""


class Failure(Exception):
    """A run could not be done: ``title`` and ``message`` for people;
    ``expected`` is False for bugs (their traceback was logged); ``exit_code``
    for the command line (2 input, 3 model unavailable, 4 stopped on a
    non-finite gradient, 5 out of memory, 6 disk full, 1 internal); ``detail``: an internal
    error's own text (for the log and the command line, never for the public)."""

    def __init__(self, title: str, message: str, expected: bool = True, exit_code: int = 1, detail: str = ""):
        super().__init__(message)
        self.title, self.message, self.expected, self.exit_code = title, message, expected, exit_code
        self.detail = detail


def failure(exc: BaseException, request=None) -> Failure:
    """The Failure of anything a run (or its preparation) raised; ``request``
    (a ``cfd.request.Request``, optional) words the out-of-memory advice."""
    import torch

    if isinstance(exc, Failure):
        return exc
    text = str(exc)
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return _out_of_memory(request)
    if isinstance(exc, GuidanceUnavailable):
        return Failure("Model unavailable", text, exit_code=3)   # the text names the model and the fix
    if isinstance(exc, InputError):
        return Failure("Invalid input", text, exit_code=2)
    if isinstance(exc, NonFiniteGradient):
        return Failure("Run stopped", f"{text} Nothing was saved.", exit_code=4)
    if isinstance(exc, WorkerFailed):   # the machine's trouble, not the input's nor a bug of the run
        print(f"cfd: {text}", file=sys.stderr)
        return Failure("Worker failed", f"A worker process stopped: {text}. Nothing was saved from this request; "
                       "try again (a new worker takes the next one).")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return Failure("Disk full", "The server's disk is full, so this run's files could not be written; nothing "
                       "was saved. Try again later (finished runs' files are removed an hour after their run).",
                       exit_code=6)
    if isinstance(exc, RuntimeError) and any(words in text.lower() for words in OUT_OF_MEMORY_WORDS):
        return _out_of_memory(request)   # torch's allocators say it in a RuntimeError's text
    return internal_failure(exc)


OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory")


def internal_failure(exc: BaseException) -> Failure:
    """A bug: its traceback goes to the log under a new incident id; people see the id only."""
    incident = uuid.uuid4().hex[:8]
    print(f"cfd: internal error {incident}:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
    return Failure("Internal error", f"An internal error stopped the run (incident {incident}); nothing was saved. "
                   "It is not your input: the server's log has the details under this id.", expected=False,
                   detail=f"{type(exc).__name__}: {exc}")


def _out_of_memory(request) -> Failure:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    res = request.res if request else None
    lower = request.lower_res() if request else 16
    return Failure("Out of memory", f"Out of memory at res={res}. Try a lower resolution (e.g. res={lower}) "
                   "or fewer seeds/views; nothing was saved.", exit_code=5)
