"""ckptd: a checkpoint server client for PyTorch training.

Save ``state_dict``s (model, optimizer, scheduler, anything nested of
tensors and plain values) to a ckptd server as immutable, versioned
checkpoints; load ``last``, ``best`` or any version back. Nothing is pickled.

Example:
    >>> import ckptd
    >>> client = ckptd.Client()   # $CKPTD_SERVER, else 127.0.0.1:50051
    >>> client.set_policy("resnet-run", monitor="val_loss", mode="min")
    >>> client.save("resnet-run", {"model": model.state_dict(), "epoch": 1},
    ...             step=100, epoch=1, metrics={"val_loss": 0.52})
    >>> client.load_into(model, "resnet-run", "best", key="model")

See :class:`ckptd.Client` for the whole API.
"""

from ._version import __version__
from .client import AliasWatch, Client
from .errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    CheckpointError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StateDictMismatchError,
    StatusCode,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from .types import AliasEvent, AliasInfo, LoadResult, MetricPoint, Policy, RunInfo, SaveHandle, ShardInfo, VersionInfo

__all__ = [
    "__version__",
    "Client",
    # results
    "VersionInfo",
    "ShardInfo",
    "RunInfo",
    "Policy",
    "AliasInfo",
    "AliasEvent",
    "AliasWatch",
    "MetricPoint",
    "LoadResult",
    "SaveHandle",
    # errors: CheckpointError and one subclass per status code
    "CheckpointError",
    "StatusCode",
    "StateDictMismatchError",
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
]
