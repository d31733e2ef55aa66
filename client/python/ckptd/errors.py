"""Exceptions raised by ckptd.

Every error is a :class:`CheckpointError`; the subclass says which status the
server (or the client, for bad input it catches before sending anything)
reported, and ``.code`` / ``.message`` carry the status code and the
human-readable message.

Example:
    >>> try:
    ...     client.load("no-such-run", "best")
    ... except ckptd.NotFoundError as e:
    ...     print(e.code.name, e.message)
"""

from __future__ import annotations

import enum
from typing import Dict, Sequence, Type

__all__ = [
    "StatusCode",
    "CheckpointError",
    "CancelledError",
    "UnknownError",
    "InvalidArgumentError",
    "DeadlineExceededError",
    "NotFoundError",
    "AlreadyExistsError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "FailedPreconditionError",
    "AbortedError",
    "OutOfRangeError",
    "UnimplementedError",
    "InternalError",
    "UnavailableError",
    "DataLossError",
    "UnauthenticatedError",
    "StateDictMismatchError",
    "error_from_status",
]


class StatusCode(enum.IntEnum):
    """The gRPC / absl status codes (same numbers)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class CheckpointError(Exception):
    """Base class of every ckptd error.

    Attributes:
        code: the :class:`StatusCode`.
        message: the message of the server (or of the client-side check).
    """

    code: StatusCode = StatusCode.UNKNOWN

    def __init__(self, message: str, code: StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = StatusCode(code)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name})"


class CancelledError(CheckpointError):
    code = StatusCode.CANCELLED


class UnknownError(CheckpointError):
    code = StatusCode.UNKNOWN


class InvalidArgumentError(CheckpointError, ValueError):
    """Bad input: an unsupported leaf or key, a malformed run name, ..."""

    code = StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(CheckpointError):
    code = StatusCode.DEADLINE_EXCEEDED


class NotFoundError(CheckpointError, LookupError):
    """No such run, version, alias, shard or key."""

    code = StatusCode.NOT_FOUND


class AlreadyExistsError(CheckpointError):
    code = StatusCode.ALREADY_EXISTS


class PermissionDeniedError(CheckpointError):
    code = StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(CheckpointError):
    code = StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(CheckpointError):
    code = StatusCode.FAILED_PRECONDITION


class AbortedError(CheckpointError):
    code = StatusCode.ABORTED


class OutOfRangeError(CheckpointError):
    code = StatusCode.OUT_OF_RANGE


class UnimplementedError(CheckpointError):
    code = StatusCode.UNIMPLEMENTED


class InternalError(CheckpointError):
    code = StatusCode.INTERNAL


class UnavailableError(CheckpointError):
    """The server cannot be reached (down, wrong address, shutting down)."""

    code = StatusCode.UNAVAILABLE


class DataLossError(CheckpointError):
    """Stored or received bytes failed verification."""

    code = StatusCode.DATA_LOSS


class UnauthenticatedError(CheckpointError):
    code = StatusCode.UNAUTHENTICATED


class StateDictMismatchError(InvalidArgumentError):
    """``load_into(strict=True)``: the checkpoint does not fit the model.

    Attributes:
        missing_keys: keys of the model absent from the checkpoint.
        unexpected_keys: keys of the checkpoint the model does not have.
        mismatched_keys: keys whose shapes differ.
    """

    def __init__(
        self,
        message: str,
        missing_keys: Sequence[str] = (),
        unexpected_keys: Sequence[str] = (),
        mismatched_keys: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)
        self.mismatched_keys = list(mismatched_keys)


_ERRORS: Dict[StatusCode, Type[CheckpointError]] = {
    cls.code: cls
    for cls in (
        CancelledError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        DataLossError,
        UnauthenticatedError,
    )
}


def error_from_status(code: int, code_name: str, message: str) -> CheckpointError:
    """The exception for a non-OK status (used by ``ckptd._native``).

    Args:
        code: the numeric status code.
        code_name: its name, e.g. ``"NOT_FOUND"`` (used when ``code`` is not a
            known code).
        message: the status message.

    Returns:
        An instance of the matching :class:`CheckpointError` subclass.
    """
    try:
        status = StatusCode(code)
    except ValueError:
        return UnknownError(f"{code_name}: {message}")
    cls = _ERRORS.get(status, UnknownError)
    return cls(message, status)
