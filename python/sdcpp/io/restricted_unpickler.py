"""A pickle reader for PyTorch state dicts that never imports or calls anything from the file.

A pickle names callables by (module, name) and the unpickler calls them; that is how a checkpoint runs
`os.system`. Here `find_class` never imports: it looks the pair up in a fixed table of sdcpp's own
stand-ins (`ALLOWED`) and refuses every other pair with `ModelFormatError` naming the file and the global.
The stand-ins only record what the file says (a storage key, an offset, a shape, strides); checking those
against the zip archive is `ckpt_reader`'s job.

Before unpickling, the opcode stream is scanned once (`prescan`), because the C unpickler itself can be
attacked before any global is looked up: it allocates by numbers in the stream (a 9-byte pickle with memo
index 2**30 makes it allocate and clear 8 GiB; BINBYTES8 allocates its length before reading), and a 1 MB
pickle of tuples nested a million deep, used as a dict key, overflows the C stack in `hash()` (segfault).

Every object handed to the pickle refuses `__setstate__` (the BUILD opcode), so a file can neither change a
stand-in nor edit a tensor record after it was made."""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import pickletools

from ..errors import ModelFormatError

MAX_DIMS = 8
MAX_DIM = 1 << 48  # one dimension, one stride, one offset (elements); far beyond any real tensor

# Storage classes torch writes in a storage's persistent id -> (our dtype name, bytes per element).
STORAGE_DTYPES = {
    "FloatStorage": ("f32", 4), "HalfStorage": ("f16", 2), "BFloat16Storage": ("bf16", 2),
    "DoubleStorage": ("f64", 8), "LongStorage": ("i64", 8), "IntStorage": ("i32", 4), "ShortStorage": ("i16", 2),
    "CharStorage": ("i8", 1), "ByteStorage": ("u8", 1), "BoolStorage": ("bool", 1),
}

# Opcodes a torch state dict never needs and that reach outside the byte stream (out-of-band buffers,
# the copyreg extension registry) or take a text persistent id.
_REFUSED_OPS = {"NEXT_BUFFER", "READONLY_BUFFER", "EXT1", "EXT2", "EXT4", "PERSID"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_TUPLE_OPS = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET"}
_MARK = -1
MAX_TUPLE_DEPTH = 100  # a state dict nests tuples 3 deep (a persistent id inside rebuild arguments)


class _Refusing:
    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"BUILD on {type(self).__name__} is not allowed")


class StorageType(_Refusing):
    """What `torch.FloatStorage` etc. resolve to: only a dtype tag inside a persistent id."""

    __slots__ = ("name", "dtype", "itemsize")

    def __init__(self, name):
        self.name = name
        self.dtype, self.itemsize = STORAGE_DTYPES[name]


class StorageRef(_Refusing):
    """A storage named by a persistent id: the zip entry `<archive>/data/<key>` holding `numel` elements."""

    __slots__ = ("key", "type", "numel")

    def __init__(self, key, storage_type, numel):
        self.key, self.type, self.numel = key, storage_type, numel


class TensorRef(_Refusing):
    """A tensor as `_rebuild_tensor_v2` describes it: a view of a storage (offset and strides in elements)."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


class Opaque(_Refusing):
    """Stand-in for harmless objects that training frameworks leave next to the state dict (a numpy step
    counter, a Lightning callback). It takes any arguments and state, keeps none, and is never a tensor."""

    __slots__ = ()
    what = "object"

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _Call(_Refusing):
    """A named stand-in callable (REDUCE calls it with the pickle's arguments)."""

    __slots__ = ("name", "fn")

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def __call__(self, *args):
        return self.fn(*args)


def _int(value, what, lo=0, hi=MAX_DIM):
    if type(value) is not int:
        raise pickle.UnpicklingError(f"{what} is a {type(value).__name__}, not an integer")
    if not lo <= value <= hi:
        raise pickle.UnpicklingError(f"{what} is outside [{lo}, {hi}]")
    return value


def _ints(value, what):
    if type(value) is not tuple or len(value) > MAX_DIMS:
        raise pickle.UnpicklingError(f"{what} must be a tuple of at most {MAX_DIMS} integers, got "
                                     f"{type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor storage is not a storage reference")
    shape, strides = _ints(size, "tensor size"), _ints(stride, "tensor stride")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError(f"size {shape} and stride {strides} differ in length")
    return TensorRef(storage, _int(storage_offset, "storage offset"), shape, strides)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return data


def _ordered_dict(*args):
    if args:  # torch and Lightning always build it empty, then fill it with SETITEMS
        raise pickle.UnpicklingError("OrderedDict with constructor arguments")
    return collections.OrderedDict()


def _opaque(what):
    return type(f"Opaque[{what}]", (Opaque,), {"__slots__": (), "what": what})


ALLOWED = {
    ("collections", "OrderedDict"): _Call("OrderedDict", _ordered_dict),
    ("torch._utils", "_rebuild_tensor_v2"): _Call("_rebuild_tensor_v2", _rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Call("_rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call("_rebuild_parameter_with_state", _rebuild_parameter),
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
    # Inert: never executed, replaced by an object that ignores its arguments.
    **{key: _opaque(".".join(key)) for key in (
        ("torch", "Size"),
        ("_codecs", "encode"),  # numpy scalars are pickled as scalar(dtype, _codecs.encode(bytes))
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    )},
}


def prescan(data: bytes):
    """Walk the opcodes once, simulating only the shape of the unpickler's stack, before anything is built.

    Refused: opcodes in _REFUSED_OPS; an argument longer than the data (BINBYTES8 allocates its length
    before reading); a memo index that skips ahead (every pickler numbers its memo densely; the C unpickler
    allocates and clears a table up to the largest index); tuples or frozensets nested more than
    MAX_TUPLE_DEPTH deep (hashing one, as a dict key or set member, recurses in C once per level: a 1 MB
    pickle of nested tuples used as a key overflows the C stack and kills the process); stack underflow.
    Raises UnpicklingError. A state dict takes ~30 opcodes per tensor; ~0.7 µs per opcode (~50 ms for SDXL)."""
    size = len(data)
    stack: list[int] = []  # per item: how deep tuples/frozensets nest in it (its hashing depth), or _MARK
    memo: list[int] = []
    pos = 0
    while True:
        if pos >= size:
            raise pickle.UnpicklingError("pickle data ends before STOP")
        entry = _OPS[data[pos]]
        if entry is None:
            raise pickle.UnpicklingError(f"unknown opcode {data[pos]:#04x} at byte {pos}")
        name, argn, fixed, marked, n_after, after_mark, kind = entry
        at, pos = pos, pos + 1
        arg = 0
        if argn >= 0:
            if kind in (_GET, _PUT, _FRAME):
                arg = int.from_bytes(data[pos:pos + argn], "little")
            pos += argn
            if kind == _FRAME and arg > size - pos:
                raise pickle.UnpicklingError(f"FRAME at byte {at} is longer than the rest of the pickle")
        elif argn == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if name in ("GLOBAL", "INST") else 1):
                end = data.find(b"\n", pos)
                if end < 0:
                    raise pickle.UnpicklingError(f"{name} at byte {at}: no newline before the end")
                line, pos = data[pos:end], end + 1
            if kind in (_GET, _PUT):
                if not line.isdigit() or len(line) > 12:
                    raise pickle.UnpicklingError(f"{name} at byte {at}: bad memo index")
                arg = int(line)
        else:
            width, signed = _COUNTED[argn]
            length = int.from_bytes(data[pos:pos + width], "little", signed=signed)
            if length < 0:
                raise pickle.UnpicklingError(f"{name} at byte {at}: negative length")
            pos += width + length
        if pos > size:
            raise pickle.UnpicklingError(f"{name} at byte {at}: argument runs past the end of the pickle")
        if kind == _REFUSED:
            raise pickle.UnpicklingError(f"opcode {name} at byte {at} is not allowed")

        depth = 0
        if marked or fixed:
            popped = _pop(stack, fixed, marked, name, at)
            if kind == _TUPLE:
                depth = 1 + max(popped, default=0)
                if depth > MAX_TUPLE_DEPTH:
                    raise pickle.UnpicklingError(f"tuples nest more than {MAX_TUPLE_DEPTH} deep at byte {at}")
            elif kind == _DUP or kind == _MEMOIZE:
                depth = popped[0]
                if kind == _MEMOIZE:
                    memo.append(depth)
        elif kind == _GET:
            if arg >= len(memo):
                raise pickle.UnpicklingError(f"memo index {arg} at byte {at} was never stored")
            depth = memo[arg]
        elif kind == _PUT:
            if not stack or stack[-1] == _MARK:
                raise pickle.UnpicklingError(f"{name} at byte {at} with nothing to store")
            if arg > len(memo):
                raise pickle.UnpicklingError(f"memo index {arg} at byte {at} skips ahead of {len(memo)}")
            if arg == len(memo):
                memo.append(stack[-1])
            else:
                memo[arg] = stack[-1]
        if kind == _STOP:
            return
        if after_mark:
            stack.append(_MARK)
        else:
            stack.extend([depth] * n_after)


def _pop(stack, fixed, marked, name, at) -> list[int]:
    """Pop what the opcode consumes: everything down to the last MARK (if `marked`), then `fixed` items."""
    popped = []
    if marked:
        while True:
            if not stack:
                raise pickle.UnpicklingError(f"{name} at byte {at} without a MARK")
            item = stack.pop()
            if item == _MARK:
                break
            popped.append(item)
    for _ in range(fixed):
        if not stack or stack[-1] == _MARK:
            raise pickle.UnpicklingError(f"{name} at byte {at}: stack underflow")
        popped.append(stack.pop())
    return popped


def _op_table():
    """Opcode byte -> (name, argument size or kind, items popped below a MARK or in all, pops to a MARK?,
    items pushed, pushes a MARK?, what the scan does with it); from pickletools' opcode descriptions."""
    kinds = {**dict.fromkeys(_REFUSED_OPS, _REFUSED), **dict.fromkeys(_TUPLE_OPS, _TUPLE),
             **dict.fromkeys(("GET", "BINGET", "LONG_BINGET"), _GET), **dict.fromkeys(_PUT_OPS, _PUT),
             "MEMOIZE": _MEMOIZE, "DUP": _DUP, "STOP": _STOP, "FRAME": _FRAME}
    table = [None] * 256
    for op in pickletools.opcodes:
        before, after = op.stack_before, op.stack_after
        marked = pickletools.markobject in before
        fixed = before.index(pickletools.markobject) if marked else len(before)
        table[ord(op.code)] = (op.name, op.arg.n if op.arg else 0, fixed, marked, len(after),
                               pickletools.markobject in after, kinds.get(op.name, 0))
    return table


_REFUSED, _TUPLE, _GET, _PUT, _MEMOIZE, _DUP, _STOP, _FRAME = range(1, 9)
_COUNTED = {pickletools.TAKEN_FROM_ARGUMENT1: (1, False), pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
            pickletools.TAKEN_FROM_ARGUMENT4U: (4, False), pickletools.TAKEN_FROM_ARGUMENT8U: (8, False)}
_OPS = _op_table()


def _python3_name(module, name):
    """What pickle's own find_class would import for a protocol 0-2 name (`commands.call` -> subprocess)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, path, data: bytes):
        super().__init__(io.BytesIO(data))
        self.path = path
        self.storages: dict[str, StorageRef] = {}

    def find_class(self, module, name):
        found = ALLOWED.get((module, name))
        if found is None:
            shown = f"'{module:.100}.{name:.100}'"
            py3 = _python3_name(module, name)
            if py3 != (module, name):  # protocol 0-2 pickles spell some names the Python 2 way
                shown += f" ({py3[0]:.100}.{py3[1]:.100} in Python 3)"
            raise ModelFormatError(self.path, f"refused global {shown}: a state dict needs only tensors, storages "
                                   "and dicts, and sdcpp never runs code from a checkpoint", rule="pickle-global")
        return found

    def persistent_load(self, pid):
        if (type(pid) is not tuple or len(pid) != 5 or type(pid[0]) is not str or pid[0] != "storage"
                or not isinstance(pid[1], StorageType) or type(pid[2]) is not str or type(pid[3]) is not str):
            raise pickle.UnpicklingError("persistent id is not ('storage', <storage type>, key, location, size)")
        _, storage_type, key, location, numel = pid
        numel = _int(numel, "storage size")
        seen = self.storages.get(key)
        if seen is None:
            seen = self.storages[key] = StorageRef(key, storage_type, numel)
        elif seen.type is not storage_type or seen.numel != numel:
            raise pickle.UnpicklingError(f"storage '{key:.80}' is referenced with two different types or sizes")
        return seen


def load_restricted(path, data: bytes):
    """Unpickle `data` (a checkpoint's data.pkl) with the stand-ins above. Any failure is ModelFormatError."""
    try:
        prescan(data)
        return RestrictedUnpickler(path, data).load()
    except ModelFormatError:
        raise
    except RecursionError as e:
        raise ModelFormatError(path, "pickle nests too deeply", rule="pickle") from e
    except MemoryError as e:
        raise ModelFormatError(path, "pickle asks for more memory than is available", rule="pickle") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            OverflowError, UnicodeError) as e:
        # The C unpickler reports damage through all of these (a bad opcode argument, a wrong stack shape,
        # a call with the wrong arguments, APPEND on a non-list, ...).
        raise ModelFormatError(path, f"data.pkl is not a valid state-dict pickle: {type(e).__name__}: {e}",
                               rule="pickle") from e
