"""The ckptd Python client.

Example:
    >>> import ckptd
    >>> client = ckptd.Client("127.0.0.1:50051")
    >>> client.set_policy("resnet-run", monitor="val_loss", mode="min")
    >>> info = client.save("resnet-run", {"model": model.state_dict(), "epoch": 3},
    ...                    step=3000, epoch=3, metrics={"val_loss": 0.41})
    >>> client.load_into(model, "resnet-run", "best", key="model")
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import numbers
import operator
import platform
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from . import _native, _progress, _tree
from ._progress import Progress
from ._version import __version__
from .errors import (
    CheckpointError,
    DataLossError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    StateDictMismatchError,
    UnimplementedError,
)
from .types import AliasEvent, AliasInfo, LoadResult, MetricPoint, Policy, RunInfo, SaveHandle, VersionInfo

__all__ = ["Client", "AliasWatch"]

Ref = Union[int, str]
MapLocation = Union[None, str, torch.device, Mapping[str, Union[str, torch.device]], Callable[..., Any]]

# Long key lists in error messages are cut after this many names.
_MAX_KEYS_IN_MESSAGE = 20
# save_async snapshots (each a full host copy of the state) that may exist at
# once, uploading or queued; a further save_async waits for one to finish.
DEFAULT_MAX_PENDING_SAVES = 2

# How long one native wait of AliasWatch.__next__ lasts: between waits the
# interpreter runs, so Ctrl-C stops a blocked watch within this time.
_WATCH_POLL_SECONDS = 0.2

_log = logging.getLogger("ckptd")

_cuda_lock = threading.Lock()
_cuda_native: Optional[bool] = None


def _native_cuda() -> bool:
    """``_native.cuda_available()``, asked once, and only when a CUDA tensor shows up."""
    global _cuda_native
    with _cuda_lock:
        if _cuda_native is None:
            _cuda_native = bool(_native.cuda_available())
        return _cuda_native


def _ref(ref: Ref) -> str:
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise InvalidArgumentError(f"ref must be a version number or a name like 'last', got {ref!r}")
    if isinstance(ref, int):
        if ref < 1:
            raise InvalidArgumentError(f"version numbers start at 1, got {ref}")
        return str(ref)
    if not ref:
        raise InvalidArgumentError("ref is empty; use a version number, 'last', 'best' or an alias")
    return ref


def _int(value: Any, name: str, minimum: Optional[int] = None) -> int:
    try:
        out = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be an int, got {type(value).__name__}") from None
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be an int, got bool")
    if minimum is not None and out < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {out}")
    return out


def _metrics(metrics: Optional[Mapping[str, Any]]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for name, value in (metrics or {}).items():
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"metric names must be non-empty str, got {name!r}")
        try:
            out[name] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgumentError(
                f"metric '{name}' must be a number (float, int, 0-d tensor), got {type(value).__name__}"
            ) from None
    return out


def _labels(labels: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in (labels or {}).items():
        if not isinstance(k, str) or not k:
            raise InvalidArgumentError(f"label names must be non-empty str, got {k!r}")
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, (bool, numbers.Number)):
            out[k] = str(v)
        else:
            raise InvalidArgumentError(f"label '{k}' must be a str (or a number), got {type(v).__name__}")
    return out


def _environment() -> Dict[str, str]:
    return {
        "torch_version": str(torch.__version__),
        "cuda_version": torch.version.cuda or "",
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "client_version": __version__,
    }


def _key_list(keys: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_KEYS_IN_MESSAGE])
    if len(keys) > _MAX_KEYS_IN_MESSAGE:
        shown += f", ... ({len(keys) - _MAX_KEYS_IN_MESSAGE} more)"
    return f"[{shown}]"


def _sync_cuda(devices: Iterable[int]) -> None:
    """Waits for the current stream of each device, so that native code reads
    (or writes) memory no queued kernel still uses."""
    for device in sorted(set(devices)):
        if device != _tree.HOST_DEVICE:
            torch.cuda.current_stream(device).synchronize()


class _Placement:
    """Where loaded tensors go, from a ``map_location`` (like ``torch.load``).

    ckptd does not record the device a tensor was saved from; every stored
    tensor counts as coming from ``"cpu"`` for dict remapping and callables.
    """

    def __init__(self, map_location: MapLocation) -> None:
        self.device = torch.device("cpu")
        self.function: Optional[Callable[..., Any]] = None
        if map_location is None:
            return
        try:
            if isinstance(map_location, (str, torch.device)):
                self.device = torch.device(map_location)
            elif isinstance(map_location, Mapping):
                self.device = torch.device(map_location.get("cpu", "cpu"))
            elif callable(map_location):
                self.function = map_location
            else:
                raise InvalidArgumentError(
                    f"map_location must be a str, torch.device, dict or callable, got {type(map_location).__name__}"
                )
        except RuntimeError as e:  # torch.device("gpu"), ...
            raise InvalidArgumentError(f"map_location={map_location!r}: {e}") from None
        if self.device.type == "cuda":
            # Checked here, before any metadata or bytes travel, instead of
            # failing in tensor.to() after the whole download.
            if not torch.cuda.is_available():
                raise InvalidArgumentError(
                    f"map_location={map_location!r} puts tensors on {self.device}, but CUDA is not available "
                    '(torch.cuda.is_available() is False); use map_location="cpu"'
                )
            if self.device.index is not None and self.device.index >= torch.cuda.device_count():
                raise InvalidArgumentError(
                    f"map_location={map_location!r} puts tensors on {self.device}, but this process sees "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )

    def finish(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.function is not None:
            moved = self.function(tensor, "cpu")
            return tensor if moved is None else moved
        return tensor


class _Reader:
    """Destination tensors for manifest entries, filled in one ``read_tensors``
    call (all shards' streams in parallel), or mapped from a co-located
    daemon's blob files (``map``)."""

    def __init__(self, manifest: Any) -> None:
        self._manifest = manifest
        # (shard, entry) -> (dtype, shape, nbytes, device)
        self._wanted: Dict[Tuple[int, int], Tuple[torch.dtype, Tuple[int, ...], int, torch.device]] = {}
        # (shard, entry) -> (tensor, final device or None)
        self._tensors: Dict[Tuple[int, int], Tuple[torch.Tensor, Optional[torch.device]]] = {}

    def add(self, shard: int, index: int, entry: Tuple[Any, ...], device: torch.device) -> None:
        path, _, code, shape, nbytes = entry
        dtype = _tree.TORCH_DTYPES.get(code)
        if dtype is None:
            raise UnimplementedError(
                f"tensor '{_tree.path_string(path)}' has dtype {_tree.dtype_name(code)}, "
                f"which torch {torch.__version__} does not have"
            )
        numel = 1
        for d in shape:
            numel *= d
        if numel * _native.dtype_size(code) != nbytes:
            raise DataLossError(
                f"tensor '{_tree.path_string(path)}': manifest says {nbytes} bytes for shape "
                f"{list(shape)} of {dtype}"
            )
        self._wanted[(shard, index)] = (dtype, tuple(shape), nbytes, device)

    def mappable(self) -> bool:
        """Whether every tensor goes to host memory (what a mapping gives)."""
        return all(device.type == "cpu" for _, _, _, device in self._wanted.values())

    def map(self, client: Any) -> None:
        """Maps every tensor from the daemon's blob files, copy-on-write, after
        the native side has checked each blob against its digest."""
        keys = [k for k, (_, _, nbytes, _) in self._wanted.items() if nbytes]
        mapped = client.map_tensors(self._manifest, keys) if keys else []
        tensors = {}
        for key, (blob, offset) in zip(keys, mapped):
            dtype, shape, nbytes, _ = self._wanted[key]
            flat = torch.frombuffer(blob, dtype=torch.uint8, count=nbytes, offset=offset)
            tensors[key] = (flat.view(dtype).view(shape), None)
        for key, (dtype, shape, nbytes, _) in self._wanted.items():
            if not nbytes:
                tensors[key] = (torch.empty(shape, dtype=dtype), None)
        self._tensors = tensors

    def read(self, client: Any, progress: Optional[Callable[[int, int], Any]] = None) -> None:
        dests = []
        devices = []
        for (shard, index), (dtype, shape, nbytes, device) in self._wanted.items():
            move_to: Optional[torch.device] = None
            native_device = _tree.HOST_DEVICE
            if device.type == "cuda" and _native_cuda():
                tensor = torch.empty(shape, dtype=dtype, device=device)
                native_device = tensor.device.index
            else:
                tensor = torch.empty(shape, dtype=dtype)
                if device.type != "cpu":
                    move_to = device
            self._tensors[(shard, index)] = (tensor, move_to)
            if nbytes:
                dests.append((shard, index, tensor.data_ptr(), native_device))
                devices.append(native_device)
        if dests:
            _sync_cuda(devices)
            if progress is None:
                client.read_tensors(self._manifest, dests)
            else:
                client.read_tensors(self._manifest, dests, progress=progress)

    def get(self, shard: int, index: int) -> torch.Tensor:
        tensor, move_to = self._tensors[(shard, index)]
        return tensor if move_to is None else tensor.to(move_to)


def _pem(name: str, value: Union[str, bytes, None], env: str) -> str:
    """PEM text given directly, else read from the file ``$env`` names."""
    if value is None:
        path = os.environ.get(env)
        if not path:
            return ""
        try:
            with open(path, "rb") as f:
                value = f.read()
        except OSError as e:
            raise InvalidArgumentError(f"${env}={path!r}: cannot read the file: {e.strerror}") from None
        name = f"${env} ({path})"
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgumentError(f"{name} is not PEM text (not ASCII)") from None
    if value and "-----BEGIN " not in value:
        raise InvalidArgumentError(f"{name} is not PEM text (no -----BEGIN line); pass the file's contents")
    return value


class Client:
    """A connection to a ckptd server.

    Safe to use from several threads. Network calls release the GIL.

    Args:
        address: ``host:port``, or ``unix:PATH`` for a ckptd on this host
            (its ``--local_socket``, default ``<data_dir>/ckptd.sock``);
            None: ``$CKPTD_SERVER``, else ``127.0.0.1:50051``.
        token: bearer token for servers with ``--auth_file``; None:
            ``$CKPTD_TOKEN`` if set.
        root_certificates: PEM of the CA(s) that signed the server's
            certificate (str or bytes); switches to TLS. None: the file named
            by ``$CKPTD_TLS_CA`` if set.
        client_certificate: PEM of this client's certificate chain, for
            servers that require mTLS (with ``client_key``). None: the file
            named by ``$CKPTD_TLS_CERT`` if set.
        client_key: PEM of the client certificate's private key. None: the
            file named by ``$CKPTD_TLS_KEY`` if set.
        timeout: deadline in seconds for each unary call (a dead server is
            reported as UnavailableError or DeadlineExceededError within it).
        channels: TCP connections to open to the server.
        streams: parallel upload / download streams per save / load.
        max_attempts: attempts per call or upload before giving up (uploads
            resume where they stopped). Retries back off from 100 ms to 2 s,
            so the default 10 rides out a server restart of up to ~10 s.
        max_pending_saves: ``save_async`` snapshots held at once (uploading
            or queued); each is a full host copy of its state. A further
            ``save_async`` blocks until one of them finishes.

    Example:
        >>> client = ckptd.Client()                      # $CKPTD_SERVER or 127.0.0.1:50051
        >>> client = ckptd.Client("ckpt.internal:50051", token=os.environ["CKPTD_TOKEN"])
    """

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        token: Optional[str] = None,
        root_certificates: Union[str, bytes, None] = None,
        client_certificate: Union[str, bytes, None] = None,
        client_key: Union[str, bytes, None] = None,
        timeout: float = 60.0,
        channels: int = 4,
        streams: int = 4,
        max_attempts: int = 10,
        max_pending_saves: int = DEFAULT_MAX_PENDING_SAVES,
    ) -> None:
        if token is None:
            token = os.environ.get("CKPTD_TOKEN")
        root_certificates = _pem("root_certificates", root_certificates, "CKPTD_TLS_CA")
        client_certificate = _pem("client_certificate", client_certificate, "CKPTD_TLS_CERT")
        client_key = _pem("client_key", client_key, "CKPTD_TLS_KEY")
        if bool(client_certificate) != bool(client_key):
            raise InvalidArgumentError(
                "client_certificate and client_key go together: give both (or set both "
                "$CKPTD_TLS_CERT and $CKPTD_TLS_KEY)"
            )
        if not timeout or timeout <= 0:
            raise InvalidArgumentError(f"timeout must be positive seconds, got {timeout!r}")
        self.address: str = address or _native.default_server_address()
        self._native = _native.Client(
            address or "",
            token or "",
            root_certificates or "",
            _int(channels, "channels", 1),
            float(timeout),
            _int(streams, "streams", 1),
            _int(max_attempts, "max_attempts", 1),
            client_certificate or "",
            client_key or "",
        )
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._executor_lock = threading.Lock()
        self.max_pending_saves: int = _int(max_pending_saves, "max_pending_saves", 1)
        # unix:PATH: saves and loads go through the daemon's zero-copy data
        # plane (PATH.data) until it answers that it has none.
        self._local_plane: bool = self.address.startswith("unix:")
        self._fallback_noted = False
        # save_async saves that went the gRPC way and may still be queued.
        self._tcp_saves: List[concurrent.futures.Future] = []
        # One slot per save_async snapshot alive; taken before the snapshot is
        # copied, given back once its upload has dropped the copy.
        self._save_slots = threading.BoundedSemaphore(self.max_pending_saves)

    def __repr__(self) -> str:
        return f"ckptd.Client({self.address!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Waits for pending ``save_async`` uploads. The client stays usable."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # ---------------------------------------------------------------- push

    def save(
        self,
        run: str,
        state: Any,
        *,
        step: int = 0,
        epoch: int = 0,
        metrics: Optional[Mapping[str, Any]] = None,
        labels: Optional[Mapping[str, Any]] = None,
        rank: int = 0,
        world_size: int = 1,
        progress: Progress = None,
    ) -> VersionInfo:
        """Saves ``state`` as a new version of ``run`` and returns when it is durable.

        ``state`` is any nesting of dict / OrderedDict / list / tuple with
        tensor, int, float, bool, str and None leaves (e.g.
        ``{"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}``);
        it round-trips exactly (types, key order, int keys). Tensors are stored
        contiguous, without ``requires_grad``. Nothing is pickled. The torch,
        CUDA and Python versions and the hostname are recorded with it.

        What does not round-trip:

        - Quantized tensors (``qint8``, ``quint8``, ``qint32``, ``quint4x2``)
          are refused with InvalidArgumentError naming the key path; save
          ``q.dequantize()``, or ``q.int_repr()`` with ``q.q_scale()`` and
          ``q.q_zero_point()``. Sparse and meta tensors are refused too.
        - Tensors that share storage (a tensor and its views, e.g. tied
          weights or ``w`` and ``w.t()``) are stored as separate tensors and
          come back as independent tensors with their own memory: writing
          to one after ``load`` does not change the other. ``load_into``
          copies into the model's own parameters, so tying in the model is
          kept.
        - ``state_dict()._metadata`` (the per-module ``version`` numbers
          ``load_state_dict`` passes to ``_load_from_state_dict``) is not
          stored: an attribute of an OrderedDict is not part of the state.
          Loading without it gives each module ``version=None``, which for
          torch's own modules changes nothing when the state dict is
          complete (BatchNorm's ``num_batches_tracked`` is already there).

        Sharded saves: every rank calls ``save`` with the same ``step``, its
        ``rank`` and the ``world_size``; the version publishes when all shards
        are in (each rank gets the version; only the last one sees COMMITTED).

        Args:
            run: run name, ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``.
            state: the state to save.
            step: training step (a sharded save's ranks meet on it).
            epoch: training epoch.
            metrics: ``{name: number}``; the run policy's ``monitor`` metric
                decides ``best``.
            labels: free-form ``{name: str}`` metadata (git sha, dataset, ...).
            rank: this process's shard.
            world_size: number of shards.
            progress: ``True`` draws an upload bar on stderr when stderr is
                a terminal (or says "0 B to send, ... already stored" when
                the server has every tensor); a callable gets
                ``(bytes_done, bytes_total)`` with the GIL held, at most every
                100 ms and once at the end. ``bytes_total`` counts the bytes
                the server is missing (after dedup). An exception from the
                callable is raised once the save is done (it does stop the
                reports, not the save).

        Returns:
            The new version's :class:`VersionInfo`.

        Raises:
            InvalidArgumentError: an unsupported leaf, key or dtype (naming its
                key path; nothing is sent), e.g. ``tensor at 'model.fc.weight'
                is quantized (torch.qint8) ...``; a bad run name, ...
            CheckpointError: any other failure, e.g. UnavailableError.

        Example:
            >>> info = client.save("resnet-run", {"model": model.state_dict(), "epoch": epoch},
            ...                    step=step, epoch=epoch, metrics={"val_loss": val_loss})
            >>> info.version, info.aliases
            (7, ('last',))
        """
        flat = _tree.flatten(state, native_cuda=self._native_cuda_enabled())
        args = self._push_args(run, step, epoch, metrics, labels, rank, world_size)
        stored = sum(e[5] for e in flat.entries if e[1] == _tree.ENTRY_TENSOR)
        report = _progress.reporter(progress, f"save {run}", stored_bytes=stored)
        # On unix:PATH the native push sends what the daemon lacks through
        # its data plane (one copy into daemon memory) and only commits an
        # unchanged state.
        _sync_cuda(leaf.device for leaf in flat.tensors)
        return self._push(args, flat, report)

    def save_async(
        self,
        run: str,
        state: Any,
        *,
        step: int = 0,
        epoch: int = 0,
        metrics: Optional[Mapping[str, Any]] = None,
        labels: Optional[Mapping[str, Any]] = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> SaveHandle:
        """Like :meth:`save`, but uploads in a background thread.

        Returns once a consistent snapshot is taken: every tensor is copied to
        host memory (one memcpy of the state, GIL released) while the caller
        waits, so the caller may modify its tensors as soon as this returns.
        Input errors (unsupported leaves, ...) raise here; upload errors raise
        from ``handle.result()``. Saves of one client upload in call order.

        Each pending save holds its host copy until its upload ends, so at
        most ``max_pending_saves`` (a :class:`Client` option, default 2: one
        uploading, one queued) exist at once: when that many are pending,
        ``save_async`` first blocks until one of them finishes, then takes
        its snapshot. Host memory for snapshots is thus bounded by
        ``max_pending_saves`` copies of the state, however often it is
        called. :meth:`close` waits for all of them (so does interpreter
        exit).

        Co-located (``unix:PATH``): the snapshot is written straight into
        memory the daemon owns (README, The co-located socket) instead of a
        host copy here, and ``save_async`` returns once the daemon has sealed
        it. The daemon then commits the version even if this process dies.
        Its ``--max_staged_bytes`` bounds those snapshots instead of
        ``max_pending_saves``: while it is full, ``save_async`` waits. A
        state larger than that bound is saved over gRPC (with a warning on
        the ``"ckptd"`` logger).

        Args:
            run, state, step, epoch, metrics, labels, rank, world_size: as for :meth:`save`.

        Returns:
            A :class:`SaveHandle` (``result()``, ``done()``).

        Example:
            >>> handle = client.save_async("resnet-run", {"model": model.state_dict()}, step=step)
            >>> optimizer.step()           # safe: the snapshot is already taken
            >>> handle.result().version
            8
        """
        flat = _tree.flatten(state, native_cuda=False)
        args = self._push_args(run, step, epoch, metrics, labels, rank, world_size)
        staged = self._stage(args, flat)
        if staged is not None:
            # The daemon holds the snapshot; only the wait for its commit
            # is left, in call order with this client's other saves.
            future = self._background().submit(lambda: VersionInfo._from_native(staged.wait()))
            return SaveHandle(future, run, args["step"])
        # Wait for a slot before copying, so that no more than
        # max_pending_saves snapshots ever exist (GIL released while waiting).
        self._save_slots.acquire()
        try:
            _tree.snapshot(flat)
            future = self._background().submit(self._push_async, args, flat)
            if self._local_plane:
                with self._executor_lock:
                    self._tcp_saves = [f for f in self._tcp_saves if not f.done()] + [future]
        except BaseException:
            flat.release()
            self._save_slots.release()
            raise
        return SaveHandle(future, run, args["step"])

    def _background(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptd-save")
            return self._executor

    def _stage(self, args: Dict[str, Any], flat: _tree.Flattened) -> Any:
        """Hands ``flat``'s tensors to a co-located daemon (one copy into its
        memory, GIL released) and returns the native StagedPush, or None when
        this client is not co-located, the daemon has no data plane now, or
        the state is larger than the daemon's ``--max_staged_bytes`` (then
        the caller saves over gRPC). Releases ``flat`` once the daemon holds
        the copy."""
        if not self._local_plane:
            return None
        # Saves queued on the gRPC path go first, so that versions follow
        # call order.
        with self._executor_lock:
            queued = list(self._tcp_saves)
        if queued:
            concurrent.futures.wait(queued)
        try:
            staged = self._native.stage_push(entries=flat.entries, **args)
        except UnimplementedError as e:
            self._note_fallback(f"ckptd: {e}; saving over gRPC instead")
            return None
        except ResourceExhaustedError as e:
            if "--max_staged_bytes" not in str(e):
                raise
            _log.warning("%s; this save goes over gRPC instead", e)
            return None
        flat.release()
        return staged

    def _note_fallback(self, message: str) -> None:
        # Once per client: a daemon without a data plane stays without one,
        # but one that restarts gets it back, so every call tries again.
        if not self._fallback_noted:
            self._fallback_noted = True
            _log.info("%s", message)

    def _push_async(self, args: Dict[str, Any], flat: _tree.Flattened) -> VersionInfo:
        try:
            return self._push(args, flat)
        finally:
            # The snapshot is dropped (by _push) before the slot is given back.
            self._save_slots.release()

    @staticmethod
    def _native_cuda_enabled() -> bool:
        # Without CUDA in torch there are no CUDA tensors: do not ask the
        # native library (it prints a note when it finds no device).
        return torch.cuda.is_available() and _native_cuda()

    def _push_args(
        self,
        run: str,
        step: Any,
        epoch: Any,
        metrics: Optional[Mapping[str, Any]],
        labels: Optional[Mapping[str, Any]],
        rank: Any,
        world_size: Any,
    ) -> Dict[str, Any]:
        if not isinstance(run, str):
            raise InvalidArgumentError(f"run must be a str, got {type(run).__name__}")
        world_size = _int(world_size, "world_size", 1)
        rank = _int(rank, "rank", 0)
        if rank >= world_size:
            raise InvalidArgumentError(f"rank {rank} is not below world_size {world_size}")
        return {
            "run": run,
            "step": _int(step, "step"),
            "epoch": _int(epoch, "epoch"),
            "rank": rank,
            "world_size": world_size,
            "metrics": _metrics(metrics),
            "env": _environment(),
            "labels": _labels(labels),
        }

    def _push(
        self, args: Dict[str, Any], flat: _tree.Flattened, progress: Optional[Callable[[int, int], Any]] = None
    ) -> VersionInfo:
        # `flat` holds every tensor (and snapshot buffer) the entries point
        # into; they stay referenced until push returns, then are dropped
        # (the executor's work item still refers to `flat` itself a little
        # longer).
        try:
            info = self._native.push(entries=flat.entries, progress=progress, **args)
        finally:
            flat.release()
        return VersionInfo._from_native(info)

    def abort(self, run: str, version: int, reason: str = "") -> None:
        """Aborts a pending version, e.g. a sharded save another rank cannot finish.

        The version never becomes visible; ranks still uploading to it, and
        any later ``save`` of its shards, fail with FailedPreconditionError
        carrying ``reason``. A later ``save`` of the same step begins a new
        version. Blobs referenced only by it become garbage for GC. Aborting
        an aborted version again is a no-op.

        Args:
            run: run name.
            version: the pending version's number (``VersionInfo.version``
                returned by ``save`` with ``state == "PENDING"``).
            reason: recorded as the version's ``abort_reason`` and passed on
                to the ranks that try to commit into it (``""``: the server
                records "aborted by a client").

        Raises:
            NotFoundError: unknown run or version.
            FailedPreconditionError: the version is already committed.
            InvalidArgumentError: ``version`` is not a version number.

        Example:
            >>> pending = client.save(run, shard, step=step, rank=rank, world_size=world_size)
            >>> try:
            ...     evaluate_and_sync()          # some rank fails here
            ... except Exception as e:
            ...     client.abort(run, pending.version, reason=f"rank {rank}: {e}")
            ...     raise
        """
        if not isinstance(run, str):
            raise InvalidArgumentError(f"run must be a str, got {type(run).__name__}")
        if not isinstance(reason, str):
            raise InvalidArgumentError(f"reason must be a str, got {type(reason).__name__}")
        self._native.abort_version(run, _int(version, "version", 1), reason)

    # ---------------------------------------------------------------- pull

    def load(
        self,
        run: str,
        ref: Ref = "last",
        map_location: MapLocation = None,
        keys: Union[None, str, Tuple[Any, ...], Sequence[Union[str, Tuple[Any, ...]]]] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        progress: Progress = None,
    ) -> Any:
        """Loads a saved state.

        Args:
            run: run name.
            ref: version number, ``"last"``, ``"best"`` or an alias.
            map_location: where tensors go, as for ``torch.load``: None (CPU),
                a device string / ``torch.device``, a dict remapping locations
                (``{"cpu": "cuda:0"}``; stored tensors count as ``"cpu"``, since
                the saving device is not recorded), or a callable
                ``f(tensor, "cpu") -> tensor`` (None keeps the CPU tensor).
                CUDA targets are filled directly when the native library
                has CUDA support; a CUDA target while CUDA is not available
                raises InvalidArgumentError before anything is fetched.
            keys: load only these subtrees (only their bytes travel). A key is
                a dotted path (``"model"``, ``"optimizer.state"``,
                ``"model.fc.weight"`` — matched against the dotted rendering
                of the stored paths, so dict keys containing dots work too) or
                a tuple of exact path segments (``("optimizer", "state", 0)``).
                The result keeps the enclosing containers (``{"model": {...}}``);
                a selected list element keeps its position only if the
                elements before it are selected too.
            rank: the shard to load. None: the state of a single-shard
                version, or ``{rank: state}`` for a multi-shard one.
            world_size: the number of shards the caller expects (e.g. its
                own ``torch.distributed`` world size when resuming); checked
                against the version's world_size before any tensor bytes
                travel. None: not checked.
            progress: ``True`` draws a download bar on stderr when stderr is
                a terminal; a callable gets ``(bytes_done, bytes_total)``
                with the GIL held, at most every 100 ms and once at the end.

        Returns:
            The state, rebuilt with the types it was saved with.

        Raises:
            InvalidArgumentError: ``world_size`` differs from the stored
                version's (the message names both), ``rank`` is not below it,
                a bad ``map_location`` (e.g. CUDA when CUDA is not available).
            NotFoundError: unknown run, ref, shard or key.
            CheckpointError: any other failure.

        Example:
            >>> state = client.load("resnet-run", "best", map_location="cpu", keys=["model"])
            >>> model.load_state_dict(state["model"])
        """
        placement = _Placement(map_location)
        report = _progress.reporter(progress, f"load {run}@{ref}")
        manifest = self._get_manifest(run, ref, rank, world_size)
        if isinstance(keys, (str, tuple)):
            keys = [keys]
        shards = self._shard_indices(manifest, rank)
        reader = _Reader(manifest)
        plans = []
        for shard in shards:
            entries = manifest.entries(shard)
            indices = list(range(len(entries))) if keys is None else _tree.select(entries, keys)
            for i in indices:
                if entries[i][1] == _tree.ENTRY_TENSOR:
                    reader.add(shard, i, entries[i], placement.device)
            plans.append((shard, entries, indices))
        if not (self._local_plane and reader.mappable() and self._map(reader)):
            reader.read(self._native, report)
        states = {}
        for shard, entries, indices in plans:
            states[manifest.shard_rank(shard)] = _tree.unflatten(
                entries, lambda i, s=shard: placement.finish(reader.get(s, i)), indices
            )
        if rank is None and len(states) > 1:
            return states
        return next(iter(states.values()))

    def load_into(
        self,
        model: torch.nn.Module,
        run: str,
        ref: Ref = "last",
        key: Union[None, str, Tuple[Any, ...]] = None,
        strict: bool = True,
        strip_prefix: Optional[str] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        progress: Progress = None,
    ) -> LoadResult:
        """Loads a saved state dict into ``model``.

        Compares the stored keys and shapes (from the manifest, before any
        bytes travel) with ``model.state_dict()``, then fetches only the
        tensors that fit, straight onto the device of the parameter or buffer
        they go to, and copies them in with ``model.load_state_dict`` (no
        autograd). With ``strict=True`` the model is left untouched when
        anything does not fit.

        Args:
            model: the module to fill.
            run: run name.
            ref: version number, ``"last"``, ``"best"`` or an alias.
            key: the subtree holding the state dict (``"model"`` for
                ``save(run, {"model": model.state_dict(), ...})``); a dotted
                path or tuple as for ``load(keys=...)``. None: the whole state.
            strict: raise when keys are missing, unexpected or shaped
                differently; False loads what fits and reports the rest.
            strip_prefix: removed from the start of stored keys that have it,
                e.g. ``"module."`` to load a DDP-wrapped model's state into a
                plain model.
            rank: the shard, for multi-shard versions.
            world_size: as for :meth:`load`: checked against the version's
                world_size when given.
            progress: as for :meth:`load` (the bytes that travel: only the
                tensors that fit).

        Returns:
            :class:`LoadResult` with missing_keys, unexpected_keys,
            mismatched_keys (skipped, left as initialised) and the version.

        Raises:
            StateDictMismatchError (an InvalidArgumentError): ``strict=True``
                and the state does not fit; lists the keys.
            NotFoundError: unknown run, ref or key.

        Example:
            >>> res = client.load_into(model, "resnet-run", "best", key="model", strip_prefix="module.")
            >>> res.missing_keys, res.unexpected_keys
            ([], [])
        """
        report = _progress.reporter(progress, f"load {run}@{ref}")
        manifest = self._get_manifest(run, ref, rank, world_size)
        info = VersionInfo._from_native(manifest.info())
        shards = self._shard_indices(manifest, rank)
        if len(shards) > 1:
            ranks = [manifest.shard_rank(s) for s in shards]
            raise InvalidArgumentError(f"{info.name} has shards {ranks}; pass rank= to load_into")
        shard = shards[0]
        entries = manifest.entries(shard)
        root = 0
        if key is not None:
            matches = _tree.select(entries, [key])
            root = next(i for i in matches if _matches_key(entries[i][0], key))
        if entries[root][1] != _tree.ENTRY_CONTAINER or entries[root][2] not in (_tree.DICT, _tree.ORDERED_DICT):
            raise InvalidArgumentError(
                f"'{_tree.path_string(entries[root][0])}' in {info.name} is not a state dict; "
                "pass key= naming the subtree that holds it"
            )
        children = _children(entries, root)

        model_state = model.state_dict()
        stored: "collections.OrderedDict[str, Tuple[int, List[int]]]" = collections.OrderedDict()
        for index, subtree in children:
            name = str(entries[index][0][-1])
            if strip_prefix and name.startswith(strip_prefix):
                name = name[len(strip_prefix) :]
            stored[name] = (index, subtree)
        missing = [k for k in model_state if k not in stored]
        unexpected = [k for k in stored if k not in model_state]
        mismatched = []
        details = []
        for name, (index, _) in stored.items():
            if name not in model_state:
                continue
            target = model_state[name]
            entry = entries[index]
            if isinstance(target, torch.Tensor) != (entry[1] == _tree.ENTRY_TENSOR):
                mismatched.append(name)
                details.append(f"{name}: stored {_describe(entry)}, model has {_describe_object(target)}")
            elif entry[1] == _tree.ENTRY_TENSOR and tuple(entry[3]) != tuple(target.shape):
                mismatched.append(name)
                details.append(f"{name}: stored shape {list(entry[3])}, model {list(target.shape)}")
        if strict and (missing or unexpected or mismatched):
            problems = []
            if missing:
                problems.append(f"missing keys (in the model, not in the checkpoint): {_key_list(missing)}")
            if unexpected:
                problems.append(f"unexpected keys (in the checkpoint, not in the model): {_key_list(unexpected)}")
            if mismatched:
                problems.append(f"shape mismatch: {'; '.join(details[:_MAX_KEYS_IN_MESSAGE])}")
            hint = ""
            if unexpected and not strip_prefix and all(k.startswith("module.") for k in unexpected):
                hint = " (saved from a DDP/DataParallel model? pass strip_prefix='module.')"
            raise StateDictMismatchError(
                f"{info.name} does not fit {type(model).__name__} (strict=True); "
                + "; ".join(problems)
                + hint
                + ". The model was not changed; strict=False loads what fits.",
                missing,
                unexpected,
                mismatched,
            )

        reader = _Reader(manifest)
        load_names = [n for n in stored if n in model_state and n not in mismatched]
        for name in load_names:
            index, subtree = stored[name]
            if entries[index][1] == _tree.ENTRY_TENSOR:
                reader.add(shard, index, entries[index], model_state[name].device)
            else:
                for i in subtree:
                    if entries[i][1] == _tree.ENTRY_TENSOR:
                        reader.add(shard, i, entries[i], torch.device("cpu"))
        reader.read(self._native, report)
        new_state = collections.OrderedDict()
        for name in load_names:
            index, subtree = stored[name]
            new_state[name] = _tree.unflatten(entries, lambda i: reader.get(shard, i), subtree)
        with torch.no_grad():
            model.load_state_dict(new_state, strict=False)
        return LoadResult(missing, unexpected, mismatched, info)

    def _map(self, reader: _Reader) -> bool:
        """Maps ``reader``'s tensors from a co-located daemon's blob files;
        False when that is not possible here (the caller reads over gRPC)."""
        try:
            reader.map(self._native)
        except UnimplementedError as e:
            self._note_fallback(f"ckptd: {e}; loading over gRPC instead")
            return False
        except (CheckpointError, RuntimeError) as e:
            # DATA_LOSS: the gRPC read checks the daemon's copy too and has
            # it quarantine a damaged blob, so its error is the one to
            # raise. Anything else (a mapping refused, an offset torch cannot
            # view): the gRPC read is the way that works.
            _log.warning("ckptd: %s; reading over gRPC instead", e)
            return False
        return True

    def _get_manifest(self, run: str, ref: Ref, rank: Optional[int], world_size: Optional[int] = None) -> Any:
        ranks = [] if rank is None else [_int(rank, "rank", 0)]
        if world_size is not None:
            world_size = _int(world_size, "world_size", 1)
            if ranks and ranks[0] >= world_size:
                raise InvalidArgumentError(f"rank {ranks[0]} is not below world_size {world_size}")
        try:
            manifest = self._native.get_version(run, _ref(ref), True, ranks)
        except InvalidArgumentError:
            # A rank the version does not have: a world_size mismatch, when
            # there is one, is the better explanation.
            if world_size is not None and ranks:
                _check_world_size(self.get(run, ref), world_size)
            raise
        if world_size is not None:
            _check_world_size(VersionInfo._from_native(manifest.info()), world_size)
        return manifest

    @staticmethod
    def _shard_indices(manifest: Any, rank: Optional[int]) -> List[int]:
        if rank is None:
            return list(range(manifest.shard_count))
        for s in range(manifest.shard_count):
            if manifest.shard_rank(s) == rank:
                return [s]
        info = manifest.info()
        raise NotFoundError(f"{info['run']}@{info['version']} has no shard {rank} (world_size {info['world_size']})")

    # ------------------------------------------------------------- history

    def get(self, run: str, ref: Ref = "last") -> VersionInfo:
        """Metadata of one version.

        Args:
            run: run name.
            ref: version number, ``"last"``, ``"best"`` or an alias.

        Returns:
            Its :class:`VersionInfo`.

        Example:
            >>> client.get("resnet-run", "best").metrics["val_loss"]
            0.3127
        """
        return VersionInfo._from_native(self._native.get_version(run, _ref(ref), False, []).info())

    def versions(
        self,
        run: str,
        *,
        min_step: Optional[int] = None,
        max_step: Optional[int] = None,
        metric: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        include_aborted: bool = False,
    ) -> List[VersionInfo]:
        """The committed versions of ``run``, oldest first.

        Args:
            run: run name.
            min_step, max_step: only versions with step in this range.
            metric: only versions that report this metric.
            labels: only versions with all these labels.
            include_aborted: also list aborted versions.

        Returns:
            A list of :class:`VersionInfo`.

        Example:
            >>> [(v.version, v.metrics["val_loss"]) for v in client.versions("resnet-run")]
        """
        return [
            VersionInfo._from_native(v)
            for v in self._native.list_versions(
                run, min_step, max_step, metric or "", _labels(labels), include_aborted
            )
        ]

    def runs(self) -> List[RunInfo]:
        """Every run on the server.

        Returns:
            A list of :class:`RunInfo`.

        Example:
            >>> [r.name for r in client.runs()]
        """
        return [RunInfo._from_native(r) for r in self._native.list_runs()]

    def set_policy(
        self,
        run: str,
        monitor: Optional[str] = None,
        mode: str = "min",
        keep_last: Optional[int] = None,
        keep_best: Optional[int] = None,
        keep_every_n_steps: Optional[int] = None,
    ) -> Policy:
        """Sets which metric defines ``best`` and the retention of ``run``.

        Args:
            run: run name (the run is created if it does not exist yet).
            monitor: metric name; None: the run has no ``best``.
            mode: ``"min"`` or ``"max"``.
            keep_last: keep only the newest N versions (None: all).
            keep_best: keep only the N best by ``monitor`` (None: all).
            keep_every_n_steps: also keep versions whose step is a multiple of N.
            ``last`` and ``best`` are never deleted; pinned versions neither.

        Returns:
            The stored :class:`Policy`.

        Example:
            >>> client.set_policy("resnet-run", monitor="val_loss", mode="min", keep_last=3, keep_best=1)
        """
        if mode not in ("min", "max"):
            raise InvalidArgumentError(f"mode must be 'min' or 'max', got {mode!r}")
        opt = lambda v, n: None if v is None else _int(v, n, 0)  # noqa: E731
        return Policy._from_native(
            self._native.set_policy(
                run,
                monitor or "",
                mode,
                opt(keep_last, "keep_last"),
                opt(keep_best, "keep_best"),
                opt(keep_every_n_steps, "keep_every_n_steps"),
            )
        )

    def get_policy(self, run: str) -> Policy:
        """The policy of ``run``."""
        return Policy._from_native(self._native.get_policy(run))

    def set_alias(self, run: str, name: str, ref: Ref) -> AliasInfo:
        """Points alias ``name`` (e.g. ``"prod"``) at ``ref``."""
        return AliasInfo._from_native(self._native.set_alias(run, name, _ref(ref)))

    def delete_alias(self, run: str, name: str) -> None:
        """Removes alias ``name``."""
        self._native.delete_alias(run, name)

    def watch(self, run: str, ref: str = "last", *, timeout: Optional[float] = None) -> "AliasWatch":
        """Follows an alias: yields a :class:`VersionInfo` each time ``ref`` moves.

        The first item is the version ``ref`` names now (none while it names
        nothing yet, e.g. ``best`` before any version has the metric), then
        one per move, in commit order. For hot reload in a serving process.
        Waiting releases the GIL (and wakes up regularly, so Ctrl-C works).

        The stream stays open until the iterator is closed: ``close()``, the
        end of a ``with`` block, or the iterator being dropped (breaking out
        of ``for info in client.watch(...)`` drops it). ``close()`` may be
        called from another thread to stop a blocked iteration.

        Args:
            run: run name.
            ref: an alias: ``"last"``, ``"best"`` or a user alias (a version
                number never moves: InvalidArgumentError).
            timeout: seconds to wait for each move; when ``ref`` has not
                moved for that long, the iteration ends (the stream is
                closed). None: wait as long as it takes.

        Returns:
            An :class:`AliasWatch` iterator.

        Raises:
            (from the iterator) NotFoundError for an unknown run,
            InvalidArgumentError for a version number, UnavailableError when
            the server goes away.

        Example:
            >>> for info in client.watch("resnet-run", "prod"):
            ...     model.load_state_dict(client.load("resnet-run", info.version)["model"])
        """
        if not isinstance(run, str):
            raise InvalidArgumentError(f"run must be a str, got {type(run).__name__}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
                raise InvalidArgumentError(f"timeout must be positive seconds or None, got {timeout!r}")
            timeout = float(timeout)
        return AliasWatch(self._native.watch(run, _ref(ref)), run, str(ref), timeout)

    def alias_history(self, run: str, alias: Optional[str] = None) -> List[AliasEvent]:
        """The audit log of alias moves in ``run``, oldest first.

        Args:
            run: run name.
            alias: only this alias (``"prod"``, ``"best"``, ...); None: all.

        Returns:
            A list of :class:`AliasEvent` (``from_version`` None: the alias
            was created; ``to_version`` None: it was deleted).

        Example:
            >>> [(e.alias, e.from_version, e.to_version) for e in client.alias_history("resnet-run", "prod")]
            [('prod', None, 3), ('prod', 3, 7)]
        """
        if not isinstance(run, str):
            raise InvalidArgumentError(f"run must be a str, got {type(run).__name__}")
        if alias is not None and not isinstance(alias, str):
            raise InvalidArgumentError(f"alias must be a str or None, got {type(alias).__name__}")
        return [AliasEvent._from_native(e) for e in self._native.alias_history(run, alias or "")]

    def pin(self, run: str, ref: Ref) -> VersionInfo:
        """Exempts a version from retention."""
        return VersionInfo._from_native(self._native.set_pinned(run, _ref(ref), True))

    def unpin(self, run: str, ref: Ref) -> VersionInfo:
        """Makes a pinned version subject to retention again."""
        return VersionInfo._from_native(self._native.set_pinned(run, _ref(ref), False))

    def delete_version(self, run: str, ref: Ref, force: bool = False) -> None:
        """Deletes one version (its blobs are collected when unreferenced).

        A version that ``last`` or ``best`` names is refused unless ``force``:
        then ``last`` moves to the previous committed version and ``best`` to
        the best remaining one under the run's policy (admin role)."""
        self._native.delete_version(run, _ref(ref), force)

    def metric_history(self, run: str, metric: Optional[str] = None) -> List[MetricPoint]:
        """Metric values over the versions of ``run`` (every metric if None)."""
        return [MetricPoint._from_native(p) for p in self._native.metric_history(run, metric or "")]


class AliasWatch:
    """The iterator of :meth:`Client.watch`: one :class:`VersionInfo` per move.

    Closing it (``close()``, ``with``, or dropping it) cancels the server
    stream. Safe to ``close()`` from another thread while one thread
    iterates; iterating from two threads at once is not supported.
    """

    def __init__(self, native: Any, run: str, ref: str, timeout: Optional[float]) -> None:
        self._native = native
        self.run = run
        self.ref = ref
        self.timeout = timeout
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the stream is closed (by ``close()``, a timeout or its end)."""
        return self._closed

    def __iter__(self) -> "AliasWatch":
        return self

    def __next__(self) -> VersionInfo:
        if self._closed:
            raise StopIteration
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            wait = _WATCH_POLL_SECONDS
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            try:
                kind, version = self._native.next(wait)
            except BaseException:
                self.close()
                raise
            if kind == "moved":
                return VersionInfo._from_native(version)
            if kind == "ended" or self._closed or (deadline is not None and time.monotonic() >= deadline):
                self.close()
                raise StopIteration

    def close(self) -> None:
        """Cancels the stream (idempotent); a blocked ``next()`` ends."""
        self._closed = True
        self._native.close()

    def __enter__(self) -> "AliasWatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        native = getattr(self, "_native", None)
        if native is not None:
            native.cancel()

    def __repr__(self) -> str:
        return f"<AliasWatch {self.run}@{self.ref}{' closed' if self._closed else ''}>"


def _check_world_size(info: VersionInfo, world_size: int) -> None:
    if info.world_size != world_size:
        raise InvalidArgumentError(
            f"world_size {world_size} does not match {info.name}, which was saved with "
            f"world_size {info.world_size}; load it with world_size={info.world_size} "
            "(or without world_size= and pick shards with rank=)"
        )


def _matches_key(path: Tuple[Any, ...], key: Any) -> bool:
    return path == key if isinstance(key, tuple) else _tree.path_string(path) == key


def _children(entries: Sequence[Tuple[Any, ...]], root: int) -> List[Tuple[int, List[int]]]:
    """(child index, indices of the child's subtree) for each child of container ``root``."""
    depth = len(entries[root][0])
    out: List[Tuple[int, List[int]]] = []
    i = root + 1
    while i < len(entries) and len(entries[i][0]) > depth:
        if len(entries[i][0]) == depth + 1:
            out.append((i, [i]))
        else:
            out[-1][1].append(i)
        i += 1
    return out


def _describe(entry: Tuple[Any, ...]) -> str:
    if entry[1] == _tree.ENTRY_TENSOR:
        return f"a tensor of shape {list(entry[3])}"
    return "a container" if entry[1] == _tree.ENTRY_CONTAINER else f"a {type(entry[2]).__name__} value"


def _describe_object(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {list(obj.shape)}"
    return f"a {type(obj).__name__}"
