"""Flattening of torch state into manifest entries, and back.

A state is any nesting of dict / OrderedDict / list / tuple whose leaves are
tensors, int, float, bool, str or None. It is flattened in pre-order into the
entry tuples ``ckptd._native`` understands (format in
``client/python/native/conversions.h``):

- every dict, OrderedDict, list and tuple is a *container* entry, then its
  children in their original order; dict keys become str or int path
  segments, list/tuple positions int segments;
- a list or tuple holding only scalars (recursively) travels as one *value*
  entry (``ValueList``, ``is_tuple`` kept), so ``param_groups[i]["params"]``
  or ``betas`` cost one entry, not one per number;
- a tensor is a *tensor* entry: dtype, shape, and a pointer to contiguous
  bytes.

Types round-trip exactly: ``type(x) is dict`` (not a subclass) is a dict,
bool stays bool, int stays int, tuple stays tuple, key order and int keys
are kept. Anything else (other classes, dict subclasses, namedtuples,
numpy scalars, functions) is rejected with InvalidArgumentError naming the key
path, before anything is sent.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch

from . import _native
from .errors import InvalidArgumentError, NotFoundError

Path = Tuple[Any, ...]
Entry = Tuple[Any, ...]

ENTRY_CONTAINER: int = _native.ENTRY_CONTAINER
ENTRY_VALUE: int = _native.ENTRY_VALUE
ENTRY_TENSOR: int = _native.ENTRY_TENSOR
HOST_DEVICE: int = _native.HOST_DEVICE

_KINDS = _native.CONTAINER_KINDS
DICT, ORDERED_DICT, LIST, TUPLE = _KINDS["DICT"], _KINDS["ORDERED_DICT"], _KINDS["LIST"], _KINDS["TUPLE"]
# collections.Counter (MultiStepLR.milestones) round-trips once the wire
# contract has a container kind for it; until then it is rejected.
COUNTER = _KINDS.get("COUNTER")
_DICT_KINDS = {dict: DICT, collections.OrderedDict: ORDERED_DICT}
if COUNTER is not None:
    _DICT_KINDS[collections.Counter] = COUNTER

_TORCH_DTYPE_NAMES = {
    torch.float32: "FLOAT32",
    torch.float64: "FLOAT64",
    torch.float16: "FLOAT16",
    torch.bfloat16: "BFLOAT16",
    torch.complex32: "COMPLEX32",
    torch.complex64: "COMPLEX64",
    torch.complex128: "COMPLEX128",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.bool: "BOOL",
}
DTYPE_CODES: Dict[torch.dtype, int] = {t: _native.DTYPES[n] for t, n in _TORCH_DTYPE_NAMES.items()}
TORCH_DTYPES: Dict[int, torch.dtype] = {c: t for t, c in DTYPE_CODES.items()}
_DTYPE_NAMES: Dict[int, str] = {c: n for n, c in _native.DTYPES.items()}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Key paths are at most this deep (the server's limit); also stops cycles.
_MAX_PATH_DEPTH = 64
# Value lists deeper than this become containers (the server allows 32).
_MAX_VALUE_DEPTH = 8
_SCALARS = (type(None), bool, int, float, str)
_SUPPORTED = "tensors, int, float, bool, str, None and dict / OrderedDict / list / tuple of those"


def path_string(path: Sequence[Any]) -> str:
    """``("model", "fc.weight")`` -> ``"model.fc.weight"``; ``()`` -> ``"<root>"``."""
    return ".".join(str(p) for p in path) if path else "<root>"


def dtype_name(code: int) -> str:
    return _DTYPE_NAMES.get(code, f"dtype {code}")


def _check_int(value: int, path: Path) -> None:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidArgumentError(f"int at '{path_string(path)}' does not fit in 64 bits: {value}")


def _plain_value(x: Any, path: Path, depth: int = 0) -> bool:
    """True if ``x`` is a scalar or a list/tuple of plain values (checks int range)."""
    t = type(x)
    if t is int:
        _check_int(x, path)
        return True
    if t in _SCALARS:
        return True
    if (t is list or t is tuple) and depth < _MAX_VALUE_DEPTH:
        return all(_plain_value(v, path + (i,), depth + 1) for i, v in enumerate(x))
    return False


class TensorLeaf:
    """A tensor prepared for upload: contiguous bytes and where they live.

    ``tensor`` is the tensor whose memory the entry points into; it must be
    kept alive while native code may read it. ``owned`` says it is a private
    copy made here (so a snapshot need not copy it again).
    """

    __slots__ = ("index", "tensor", "owned", "device")

    def __init__(self, index: int, tensor: torch.Tensor, owned: bool, device: int) -> None:
        self.index = index
        self.tensor = tensor
        self.owned = owned
        self.device = device


class Flattened:
    """The entries of one state, and the tensors they point into."""

    def __init__(self) -> None:
        self.entries: List[Entry] = []
        self.tensors: List[TensorLeaf] = []
        # Anything else native code reads (e.g. the snapshot buffer).
        self.keepalive: List[Any] = []

    def release(self) -> None:
        """Drops the references to tensor memory; call once native code is done."""
        self.entries = []
        self.tensors = []
        self.keepalive = []


def _prepare_tensor(x: torch.Tensor, path: Path, native_cuda: bool) -> Tuple[torch.Tensor, bool, int]:
    """Contiguous, conj/neg-resolved, host (or native CUDA) bytes of ``x``."""
    where = path_string(path)
    if x.layout != torch.strided:
        raise InvalidArgumentError(f"tensor at '{where}' has layout {x.layout}; only dense (strided) tensors are supported")
    if x.is_quantized:
        raise InvalidArgumentError(
            f"tensor at '{where}' is quantized ({x.dtype}), which ckptd does not store; save "
            "t.dequantize(), or t.int_repr() together with its scale and zero point"
        )
    if x.dtype not in DTYPE_CODES:
        raise InvalidArgumentError(f"tensor at '{where}' has unsupported dtype {x.dtype}")
    if x.is_meta:
        raise InvalidArgumentError(f"tensor at '{where}' is on the meta device and has no data")
    t = x.detach()
    owned = False
    device = HOST_DEVICE
    if t.device.type == "cuda" and native_cuda:
        device = t.device.index if t.device.index is not None else torch.cuda.current_device()
    elif t.device.type != "cpu":
        t = t.cpu()
        owned = True
    if t.is_conj():
        t = t.resolve_conj()
        owned = True
    if t.is_neg():
        t = t.resolve_neg()
        owned = True
    if not t.is_contiguous():
        t = t.contiguous()
        owned = True
    return t, owned, device


def flatten(state: Any, *, native_cuda: bool = False) -> Flattened:
    """Flattens ``state`` into entries (pre-order).

    Args:
        state: a dict / OrderedDict / list / tuple (the root must be a container).
        native_cuda: hand CUDA tensors to native code as device pointers; else
            they are copied to the host here.

    Returns:
        The entries and the tensors they point into.

    Raises:
        InvalidArgumentError: an unsupported leaf, key or dtype, naming its key path.
    """
    out = Flattened()
    if type(state) not in (dict, collections.OrderedDict, list, tuple):
        raise InvalidArgumentError(
            f"the state must be a dict, OrderedDict, list or tuple, got {type(state).__name__}"
        )
    # Explicit stack: (object, path); children are pushed in reverse so that
    # they pop in order, which gives pre-order.
    stack: List[Tuple[Any, Path]] = [(state, ())]
    entries = out.entries
    while stack:
        x, path = stack.pop()
        t = type(x)
        if len(path) > _MAX_PATH_DEPTH:
            raise InvalidArgumentError(
                f"the state nests deeper than {_MAX_PATH_DEPTH} levels at '{path_string(path[:8])}...' "
                "(does it contain itself?)"
            )
        if t in _DICT_KINDS:
            entries.append((path, ENTRY_CONTAINER, _DICT_KINDS[t]))
            children = []
            for k, v in x.items():
                kt = type(k)
                if kt is int:
                    _check_int(k, path + (k,))
                elif kt is not str:
                    raise InvalidArgumentError(
                        f"unsupported dict key {k!r} of type {kt.__name__} at '{path_string(path)}': "
                        "keys must be str or int"
                    )
                children.append((v, path + (k,)))
            stack.extend(reversed(children))
        elif t is list or t is tuple:
            if path and _plain_value(x, path):  # the root is always a container
                entries.append((path, ENTRY_VALUE, x))
            else:
                entries.append((path, ENTRY_CONTAINER, LIST if t is list else TUPLE))
                stack.extend((x[i], path + (i,)) for i in range(len(x) - 1, -1, -1))
        elif isinstance(x, torch.Tensor):
            tensor, owned, device = _prepare_tensor(x, path, native_cuda)
            out.tensors.append(TensorLeaf(len(entries), tensor, owned, device))
            entries.append(
                (
                    path,
                    ENTRY_TENSOR,
                    DTYPE_CODES[tensor.dtype],
                    tuple(tensor.shape),
                    tensor.data_ptr(),
                    tensor.numel() * tensor.element_size(),
                    device,
                )
            )
        elif _plain_value(x, path):
            entries.append((path, ENTRY_VALUE, x))
        else:
            what = getattr(x, "__qualname__", None) if callable(x) else None
            desc = f"{type(x).__module__}.{type(x).__qualname__}" + (f" ({what})" if what else "")
            raise InvalidArgumentError(
                f"unsupported value of type {desc} at '{path_string(path)}'; ckptd stores {_SUPPORTED}"
            )
    return out


_ALIGN = 64


def snapshot(flat: Flattened) -> None:
    """Makes ``flat`` independent of the caller's tensors (for save_async).

    Every tensor leaf still pointing into caller memory is copied, with one
    memcpy (GIL released), into a single host buffer; CUDA tensors are copied
    to the host. Afterwards the caller may modify its tensors freely.
    """
    jobs = []
    total = 0
    for leaf in flat.tensors:
        if leaf.device != HOST_DEVICE:
            leaf.tensor = leaf.tensor.cpu()
            leaf.device = HOST_DEVICE
            leaf.owned = True
            _retarget(flat, leaf, leaf.tensor.data_ptr())
            continue
        if leaf.owned:
            continue
        nbytes = leaf.tensor.numel() * leaf.tensor.element_size()
        jobs.append((leaf, total, nbytes))
        total += (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    if not jobs:
        return
    buffer = torch.empty(total, dtype=torch.uint8)
    base = buffer.data_ptr()
    _native.copy_memory([(base + offset, leaf.tensor.data_ptr(), n) for leaf, offset, n in jobs])
    for leaf, offset, _ in jobs:
        _retarget(flat, leaf, base + offset)
        leaf.tensor = None  # type: ignore[assignment]  # the buffer holds the bytes now
        leaf.owned = True
    flat.keepalive.append(buffer)
    flat.tensors = [leaf for leaf in flat.tensors if leaf.tensor is not None]


def _retarget(flat: Flattened, leaf: TensorLeaf, ptr: int) -> None:
    e = flat.entries[leaf.index]
    flat.entries[leaf.index] = (e[0], e[1], e[2], e[3], ptr, e[5], leaf.device)


# --------------------------------------------------------------------------
# Selection (load(keys=...)) and rebuilding


KeySpec = Any  # str (dotted) or tuple of segments


def select(entries: Sequence[Entry], keys: Iterable[KeySpec]) -> List[int]:
    """Indices of the entries under the selected subtrees, plus their ancestors
    (the root always).

    A key is a dotted string matched against the dotted rendering of entry
    paths (``"model"``, ``"optimizer.state"``, ``"model.fc.weight"`` for the
    entry ``("model", "fc.weight")``), or a tuple of exact path segments
    (``("optimizer", "state", 0)``).

    Raises:
        NotFoundError: a key matches no entry.
    """
    roots: Set[Path] = set()
    for spec in keys:
        if isinstance(spec, tuple):
            matched = [e[0] for e in entries if e[0] == spec and spec]
        elif isinstance(spec, str) and spec:
            matched = [e[0] for e in entries if e[0] and path_string(e[0]) == spec]
        else:
            raise InvalidArgumentError(f"keys must be non-empty str or tuple, got {spec!r}")
        if not matched:
            top = ", ".join(repr(e[0][0]) for e in entries if len(e[0]) == 1)
            raise NotFoundError(f"key {spec!r} is not in the checkpoint; its top-level keys are: {top}")
        roots.update(matched)
    ancestors = {root[:i] for root in roots for i in range(len(root))}
    out = []
    for i, e in enumerate(entries):
        path = e[0]
        if not path or path in ancestors or any(path[:n] in roots for n in range(1, len(path) + 1)):
            out.append(i)
    return out


def unflatten(entries: Sequence[Entry], leaves: Callable[[int], Any], indices: Optional[Sequence[int]] = None) -> Any:
    """Rebuilds a (sub)tree from pull-format entries.

    Args:
        entries: the shard's entries (pre-order).
        leaves: tensor for a tensor entry's index.
        indices: the entries to use, in pre-order: the first is the subtree's
            root, every other entry's ancestors up to it are included.
            None: all entries (the whole state).

    Returns:
        The rebuilt object at the first entry.
    """
    order = list(range(len(entries))) if indices is None else list(indices)
    if not order:
        raise InvalidArgumentError("nothing to rebuild: no entries selected")
    pos = 0
    n = len(order)

    def build() -> Any:
        nonlocal pos
        i = order[pos]
        path, kind = entries[i][0], entries[i][1]
        pos += 1
        if kind == ENTRY_VALUE:
            return entries[i][2]
        if kind == ENTRY_TENSOR:
            return leaves(i)
        depth = len(path)
        ckind = entries[i][2]
        items = []
        while pos < n and len(entries[order[pos]][0]) > depth:
            key = entries[order[pos]][0][depth]
            items.append((key, build()))
        if ckind == DICT:
            return dict(items)
        if ckind == ORDERED_DICT:
            return collections.OrderedDict(items)
        if ckind == LIST:
            return [v for _, v in items]
        if ckind == COUNTER:
            return collections.Counter(dict(items))
        if ckind == TUPLE:
            return tuple(v for _, v in items)
        raise InvalidArgumentError(f"unknown container kind {ckind} at '{path_string(path)}'")

    return build()
