"""Errors a user can fix, under one base class, so that the command line tells them apart from bugs.

`UserError` is what `hsjp-study` prints as one line (`error: ...`) with exit status 2: a bad study
file or option, missing or malformed data, a bad checkpoint, a store that cannot be used, a Ray
that is too old, a busy host. Every other exception is a bug in this project and is shown with its
traceback and a request to report it. The message of a `UserError` names the file, key or path, the
value and what was expected; raise it (or a subclass) only where the user can act on the message.

The subclasses keep the built-in base that callers caught before (`ValueError`, `FileNotFoundError`,
`RuntimeError`), so code that catches those still does. This module imports nothing: the orchestrator,
the workloads and the reports can all use it without pulling in Ray, torch or pyarrow.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what, where and what is expected."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named (an image, an annotation file, a checkpoint) does not exist."""


class BadFileError(UserError, ValueError):
    """A file the user gave exists but does not hold what it should (invalid JSON, wrong layout)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be loaded strictly into the model (the message names the file and key)."""


__all__ = ["BadFileError", "CheckpointError", "MissingFileError", "UserError"]
