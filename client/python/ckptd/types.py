"""Result types of the ckptd client: version and run metadata, load results,
and the handle of an asynchronous save."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import logging
import weakref
from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = [
    "VersionInfo",
    "ShardInfo",
    "RunInfo",
    "Policy",
    "AliasInfo",
    "AliasEvent",
    "MetricPoint",
    "LoadResult",
    "SaveHandle",
]

_log = logging.getLogger("ckptd")


def _time(ns: int) -> Optional[datetime.datetime]:
    """Unix nanoseconds -> UTC-aware datetime (microsecond precision); 0 -> None."""
    if not ns:
        return None
    seconds, rest = divmod(int(ns), 1_000_000_000)
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc) + datetime.timedelta(
        microseconds=rest // 1000
    )


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One committed shard (rank) of a version."""

    rank: int
    total_bytes: int
    tensor_count: int
    committed_at: Optional[datetime.datetime]

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> "ShardInfo":
        return cls(
            rank=d["rank"],
            total_bytes=d["total_bytes"],
            tensor_count=d["tensor_count"],
            committed_at=_time(d["committed_at"]),
        )


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """Metadata of one checkpoint version (``run@version``).

    Attributes:
        run: the run name.
        version: the version number (1, 2, ... per run).
        step, epoch: as given to ``save``.
        state: ``"COMMITTED"``, ``"PENDING"`` (a sharded save still waiting for
            ranks) or ``"ABORTED"``.
        world_size: number of shards (ranks).
        metrics: metrics given to ``save`` (merged over ranks).
        torch_version, cuda_version, python_version, hostname, client_version:
            the environment of the saving process (cuda_version is ``""``
            without CUDA).
        labels: user labels given to ``save``.
        created_at: when the version was begun (UTC-aware datetime).
        committed_at: when it was published; None while pending.
        total_bytes: tensor bytes over all shards.
        uploaded_bytes: bytes that actually travelled (after dedup).
        aliases: aliases currently pointing here (``"last"``, ``"best"``, ...).
        pinned: exempt from retention.
        shards: per-rank details.
        abort_reason: why an ABORTED version was aborted.
    """

    run: str
    version: int
    step: int
    epoch: int
    state: str
    world_size: int
    metrics: Dict[str, float]
    torch_version: str
    cuda_version: str
    python_version: str
    hostname: str
    client_version: str
    labels: Dict[str, str]
    created_at: Optional[datetime.datetime]
    committed_at: Optional[datetime.datetime]
    total_bytes: int
    uploaded_bytes: int
    aliases: Tuple[str, ...]
    pinned: bool
    shards: Tuple[ShardInfo, ...]
    abort_reason: str = ""

    def __hash__(self) -> int:
        # metrics / labels are dicts; equal versions share run and number.
        return hash((self.run, self.version))

    @property
    def name(self) -> str:
        """``"run@version"``."""
        return f"{self.run}@{self.version}"

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> "VersionInfo":
        return cls(
            run=d["run"],
            version=d["version"],
            step=d["step"],
            epoch=d["epoch"],
            state=d["state"],
            world_size=d["world_size"],
            metrics=dict(d["metrics"]),
            torch_version=d["torch_version"],
            cuda_version=d["cuda_version"],
            python_version=d["python_version"],
            hostname=d["hostname"],
            client_version=d["client_version"],
            labels=dict(d["labels"]),
            created_at=_time(d["created_at"]),
            committed_at=_time(d["committed_at"]),
            total_bytes=d["total_bytes"],
            uploaded_bytes=d["uploaded_bytes"],
            aliases=tuple(d["aliases"]),
            pinned=d["pinned"],
            shards=tuple(ShardInfo._from_native(s) for s in d["shards"]),
            abort_reason=d["abort_reason"],
        )


@dataclasses.dataclass(frozen=True)
class Policy:
    """Per-run policy: which metric defines ``best``, and retention.

    Attributes:
        monitor: metric name; ``""``: the run has no ``best``.
        mode: ``"min"`` or ``"max"`` (``""`` when unset).
        keep_last: keep the newest N versions (None: keep all).
        keep_best: keep the N best versions by ``monitor`` (None: keep all).
        keep_every_n_steps: also keep versions whose step is a multiple of N.
    """

    monitor: str = ""
    mode: str = ""
    keep_last: Optional[int] = None
    keep_best: Optional[int] = None
    keep_every_n_steps: Optional[int] = None

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> "Policy":
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Summary of one run.

    Attributes:
        name: the run name.
        version_count: committed versions.
        total_bytes: tensor bytes over its versions.
        created_at, last_commit_at: UTC-aware datetimes (None if never).
        last_version, best_version: version numbers of ``last`` / ``best``
            (None when the alias does not exist).
        policy: the run's :class:`Policy`.
    """

    name: str
    version_count: int
    total_bytes: int
    created_at: Optional[datetime.datetime]
    last_commit_at: Optional[datetime.datetime]
    last_version: Optional[int]
    best_version: Optional[int]
    policy: Policy

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> "RunInfo":
        return cls(
            name=d["name"],
            version_count=d["version_count"],
            total_bytes=d["total_bytes"],
            created_at=_time(d["created_at"]),
            last_commit_at=_time(d["last_commit_at"]),
            last_version=d["last_version"] or None,
            best_version=d["best_version"] or None,
            policy=Policy._from_native(d["policy"]),
        )


@dataclasses.dataclass(frozen=True)
class AliasInfo:
    """An alias of a run and the version it points at."""

    run: str
    name: str
    version: int
    updated_at: Optional[datetime.datetime]

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> "AliasInfo":
        return cls(d["run"], d["name"], d["version"], _time(d["updated_at"]))


@dataclasses.dataclass(frozen=True)
class AliasEvent:
    """One move of an alias, from the run's alias audit log.

    Attributes:
        run: the run name.
        alias: the alias that moved (``"last"``, ``"best"``, ``"prod"``, ...).
        from_version: the version it named before; None when it was created.
        to_version: the version it names since; None when it was deleted.
        at: when (UTC-aware datetime).
        actor: who moved it (the caller's identity; ``""`` when the server
            has no authentication, the server for ``last`` / ``best``).
    """

    run: str
    alias: str
    from_version: Optional[int]
    to_version: Optional[int]
    at: Optional[datetime.datetime]
    actor: str

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> "AliasEvent":
        return cls(
            d["run"], d["alias"], d["from_version"] or None, d["to_version"] or None, _time(d["at"]), d["actor"]
        )


@dataclasses.dataclass(frozen=True)
class MetricPoint:
    """One metric value of one version."""

    version: int
    step: int
    metric: str
    value: float
    committed_at: Optional[datetime.datetime]

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> "MetricPoint":
        return cls(d["version"], d["step"], d["metric"], d["value"], _time(d["committed_at"]))


@dataclasses.dataclass
class LoadResult:
    """What ``Client.load_into`` did not load.

    Attributes:
        missing_keys: model keys the checkpoint does not have (left as they were).
        unexpected_keys: checkpoint keys the model does not have (ignored).
        mismatched_keys: keys whose shapes differ (left as they were).
        version: the version that was loaded.
    """

    missing_keys: List[str] = dataclasses.field(default_factory=list)
    unexpected_keys: List[str] = dataclasses.field(default_factory=list)
    mismatched_keys: List[str] = dataclasses.field(default_factory=list)
    version: Optional[VersionInfo] = None


class SaveHandle:
    """The pending upload of ``Client.save_async``.

    The state was already snapshotted when ``save_async`` returned; the
    upload runs in a background thread. ``result()`` waits and returns the
    :class:`VersionInfo` or raises the upload's error. An error nobody
    retrieved is logged (logger ``"ckptd"``) when the handle is dropped, so a
    failed save never goes unnoticed.

    Example:
        >>> handle = client.save_async("run", model.state_dict(), step=100)
        >>> ...  # keep training; the tensors may change now
        >>> info = handle.result()
    """

    def __init__(self, future: "concurrent.futures.Future[VersionInfo]", run: str, step: int) -> None:
        self._future = future
        self._run = run
        self._step = step
        self._retrieved = False
        # The handle may be dropped before the upload ends: report a failure
        # then too.
        owner = weakref.ref(self)
        future.add_done_callback(lambda f: _report_orphaned_failure(owner, f, run, step))

    def result(self, timeout: Optional[float] = None) -> VersionInfo:
        """Waits for the upload.

        Args:
            timeout: seconds to wait; None waits as long as it takes.

        Returns:
            The committed (or, for a sharded save, pending) version.

        Raises:
            CheckpointError: the upload failed.
            TimeoutError: ``timeout`` passed first (the upload continues).
        """
        try:
            value = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"save of run '{self._run}' step {self._step} still running") from None
        except BaseException:
            self._retrieved = True
            raise
        self._retrieved = True
        return value

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """Waits, then returns the upload's error or None."""
        try:
            exc = self._future.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"save of run '{self._run}' step {self._step} still running") from None
        self._retrieved = True
        return exc

    def done(self) -> bool:
        """True when the upload finished (successfully or not)."""
        return self._future.done()

    def __repr__(self) -> str:
        status = "running"
        if self._future.done():
            status = "failed" if self._future.exception() is not None else "done"
        return f"<SaveHandle run={self._run!r} step={self._step} {status}>"

    def __del__(self) -> None:
        future = getattr(self, "_future", None)
        if future is None or self._retrieved or not future.done() or future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            _log_unretrieved(self._run, self._step, exc)


def _log_unretrieved(run: str, step: int, exc: BaseException) -> None:
    _log.error("save_async of run '%s' step %d failed and nobody called result(): %s", run, step, exc)


def _report_orphaned_failure(
    owner: "weakref.ReferenceType[SaveHandle]", future: concurrent.futures.Future, run: str, step: int
) -> None:
    if owner() is not None or future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        _log_unretrieved(run, step, exc)
