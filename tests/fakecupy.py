"""A stand-in for CuPy that runs on the CPU, so that minift's GPU code path is exercised where no GPU exists.

minift's ops take the array module from their arguments (`backend.xp_of`), so the same function body runs on NumPy
and on CuPy. Code written on a laptop can still be wrong for CuPy in ways NumPy never shows, and without a GPU those
mistakes stay hidden until someone has one. This module plays CuPy's part with NumPy doing the arithmetic underneath,
and is as strict as CuPy where NumPy is lenient:

  - a device array never turns into a host array by itself: `np.asarray(d)`, and anything else that goes through
    `__array__` (np.testing's asserts, for one), raise as CuPy's do (`.get()`, `cupy.asnumpy` are the ways out);
  - a host `numpy.ndarray` (0-d included) is refused as an operand of a device function, a ufunc, an index or an
    assigned value, as CuPy refuses it ("Unsupported type"); `cupy.asarray`/`cupy.array` are the way in, and they
    copy, so host and device never share memory (code that relies on aliasing the two breaks here as on a GPU);
  - reductions and scalar indexing give 0-d device arrays, not NumPy scalars, and 0-d arrays have no `__index__`;
  - names NumPy has and CuPy 14 lacks (`errstate`, `insert`, `ndarray.resize`, ...) raise AttributeError, and
    ufuncs accept only CuPy's keywords (`out`, `dtype`, `casting`; no `where`).

It also keeps the books of CuPy's memory pool (`get_default_memory_pool().used_bytes()`, `cuda.MemoryHook`), so
that memory measurement runs, and counts device -> host transfers (`TRANSFERS`), each a point where a real GPU
would sit idle while the host catches up. It runs minift's fused kernels (minift/fast/kernels.py) through
`ElementwiseKernel`, which evaluates their CUDA C bodies with NumPy one statement at a time and refuses anything
outside the small subset of C those bodies are allowed (so a body that would not compile, or that computes in
double, fails here first), and it counts kernel launches (`LAUNCHES`), the host-side cost of a GPU step. What it
cannot check: CUDA compilation, numerics, speed, streams, true GPU memory. The arithmetic is NumPy's, so results on
the fake device are bitwise those of the CPU path: a test can compare the two exactly.

Use it through the `fake_gpu` fixture (conftest.py), which makes `device="gpu"` resolve to this module.
"""
from __future__ import annotations

import re
import types
import weakref

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

VERSION = "fake-14.2.0"

# Public names of numpy (2.4) and numpy.ndarray that cupy-cuda12x 14.2.0 does not have, read off an installed CuPy
# (importing CuPy needs no GPU): sorted(set(dir(numpy)) - set(dir(cupy))), and the same for ndarray. Only names a
# numerical code might reach for are kept.
MISSING_IN_CUPY = frozenset("""
    asmatrix block bmat char core ctypeslib einsum_path emath errstate frompyfunc geomspace getbufsize geterr
    geterrcall histogram_bin_edges insert ma matrix matvec memmap nanpercentile nanquantile ndenumerate nditer
    nested_iters polyder polydiv polyint rec recarray setbufsize seterr seterrcall spacing strings unstack vecdot
    vecmat float128 longdouble clongdouble complex256 object_ str_ bytes_ void datetime64 timedelta64
""".split())
MISSING_METHODS = frozenset({"ctypes", "getfield", "resize", "setfield", "setflags", "to_device"})
UFUNC_KWARGS = frozenset({"out", "dtype", "casting"})             # cupy.ufunc.__call__ takes these and no others
REDUCE_KWARGS = frozenset({"axis", "dtype", "out", "keepdims"})   # cupy.ufunc.reduce(array, axis, dtype, out, keepdims)


class HostArrayError(TypeError):
    """A NumPy array met a device array where CuPy would refuse it."""


def _refuse_host(a, where):
    raise HostArrayError(
        f"{where}: got a host numpy.ndarray (shape {a.shape}, {a.dtype}) where CuPy needs a device array or a "
        "scalar; move it with xp.asarray(...) first (fake CuPy, tests/fakecupy.py)")


def _unwrap(x, where):
    """Device arrays -> the NumPy arrays inside them, through lists, tuples and dicts; host arrays are refused."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, np.ndarray):
        _refuse_host(x, where)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, where) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, where) for k, v in x.items()}
    return x


def _wrap(r):
    """NumPy results -> device arrays; NumPy scalars become 0-d device arrays, as CuPy's reductions return."""
    if isinstance(r, np.ndarray):
        return DeviceArray(r)
    if isinstance(r, np.generic):
        return DeviceArray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _call(func, args, kwargs, name):
    LAUNCHES.add(name)
    out = kwargs.get("out")
    r = func(*_unwrap(args, name), **_unwrap(kwargs, name))
    if isinstance(out, DeviceArray):
        return out                                 # CuPy returns the `out` array itself
    return _wrap(r)


class MemoryHook:
    """cupy.cuda.MemoryHook: while entered, `malloc_postprocess` is called after every allocation from the pool."""
    name = "hook"

    def __enter__(self):
        _HOOKS.append(self)
        return self

    def __exit__(self, *exc):
        _HOOKS.remove(self)

    def malloc_postprocess(self, **kwargs):
        pass


_HOOKS: list = []


class MemoryPool:
    """cupy.get_default_memory_pool(): bytes held by live device buffers, each rounded up to 512 bytes as CuPy's
    pool rounds them. A buffer is a NumPy array that owns its memory and was handed out as a device array; it is
    released when the last array (or view) using it is gone. Temporaries inside one NumPy call are not seen (CuPy
    would see some of them): measurements on the fake test the code path, not the numbers."""
    UNIT = 512

    def __init__(self):
        self._used = 0
        self._live = set()                          # id() of the live buffers

    def used_bytes(self) -> int:
        return self._used

    def track(self, a: np.ndarray):
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        if root.base is not None or id(root) in self._live:
            return                                  # memory NumPy does not own (a bytes buffer), or counted already
        size = -(-root.nbytes // self.UNIT) * self.UNIT
        self._live.add(id(root))
        self._used += size
        weakref.finalize(root, self._release, id(root), size)
        for hook in list(_HOOKS):
            hook.malloc_postprocess(device_id=0, size=root.nbytes, mem_size=size, mem_ptr=0, pmem_id=0)

    def _release(self, key, size):
        self._live.discard(key)
        self._used -= size


_POOL = MemoryPool()


class Transfers:
    """Device -> host transfers: each `.get()`, `.item()`, `.tolist()`, `float()`, `int()`, `bool()`, `format()` of a
    device array, and each `cupy.asnumpy`. On a GPU every one of them waits for the device to finish all the work
    queued before it (CuPy launches kernels asynchronously; reading a value back is where the host catches up), so
    a training step that reads back once per parameter tensor idles the GPU once per tensor. Iterating a device
    array is not counted: CuPy yields device views, nothing crosses."""

    def __init__(self):
        self.count = 0


TRANSFERS = Transfers()


def _transfer():
    TRANSFERS.count += 1


class Launches:
    """Kernel launches, approximately as CuPy makes them: every ufunc call and reduction, every function or method
    that computes (matmul, sum, astype, copy, zeros, ...), every assignment into a device array, indexing with an
    array, and each fused `ElementwiseKernel` call. Views (reshape, transpose, basic slicing) and uninitialised
    allocations (empty, empty_like) launch nothing and are not counted. On a GPU each launch costs CuPy several
    microseconds of host time however small the array, so a small model's step is expected to be bounded by their
    number."""

    NOT_LAUNCHING = frozenset({"reshape", "transpose", "swapaxes", "view", "squeeze", "expand_dims", "broadcast_to",
                               "moveaxis", "empty", "empty_like", "shape", "ndim", "result_type"})

    def __init__(self):
        self.count = 0
        self.by_name = {}

    def add(self, name):
        short = name.rsplit(".", 1)[-1]
        if short not in self.NOT_LAUNCHING:
            self.count += 1
            self.by_name[short] = self.by_name.get(short, 0) + 1

    def reset(self):
        self.count, self.by_name = 0, {}


LAUNCHES = Launches()


class DeviceArray(NDArrayOperatorsMixin):
    """An array "on the device": a NumPy array that refuses to be mixed with host arrays, as cupy.ndarray does."""

    __slots__ = ("_a",)
    __hash__ = None

    def __init__(self, a: np.ndarray):
        self._a = a
        _POOL.track(a)

    # --- the explicit ways back to the host (CuPy's own spellings)
    def get(self):
        _transfer()
        return self._a.copy()

    def item(self):
        _transfer()
        return self._a.item()

    def tolist(self):
        _transfer()
        return self._a.tolist()

    def __float__(self):
        _transfer()
        return float(self._a)

    def __int__(self):
        _transfer()
        return int(self._a)

    def __bool__(self):
        _transfer()
        return bool(self._a)

    def __format__(self, spec):
        _transfer()
        return format(self._a, spec)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __repr__(self):
        return "fakecupy." + repr(self._a)

    # --- what CuPy refuses
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Use .get() or cupy.asnumpy() "
                        "(fake CuPy, tests/fakecupy.py)")

    # --- indexing: device arrays, ints, slices, lists; host arrays refused
    def __getitem__(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, (DeviceArray, list)) for p in parts):
            LAUNCHES.add("take")                          # an array index gathers: a kernel; a slice is a view
        return _wrap(self._a[_unwrap(index, "indexing a device array")])

    def __setitem__(self, index, value):
        LAUNCHES.add("setitem")
        self._a[_unwrap(index, "indexing a device array")] = _unwrap(value, "assigning into a device array")

    # --- ufuncs (operators come through here via NDArrayOperatorsMixin) and numpy functions called on device arrays
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        allowed = UFUNC_KWARGS if method == "__call__" else REDUCE_KWARGS
        extra = set(kwargs) - allowed
        if extra:
            raise TypeError(f"{ufunc.__name__}.{method}: CuPy's ufuncs take no {sorted(extra)} keyword")
        name = f"numpy.{ufunc.__name__}"
        LAUNCHES.add(name)
        r = getattr(ufunc, method)(*_unwrap(inputs, name), **_unwrap(kwargs, name))
        out = kwargs.get("out")                           # NumPy hands `out` over as a tuple
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(r)

    def __array_function__(self, func, types_, args, kwargs):
        if func.__name__ in MISSING_IN_CUPY:
            raise TypeError(f"numpy.{func.__name__} has no CuPy implementation")
        return _call(func, args, kwargs, f"numpy.{func.__name__}")

    # --- everything else ndarray has: attributes pass through, methods unwrap their arguments and wrap results
    def __getattr__(self, name):
        if name.startswith("__") or name == "_a" or name in MISSING_METHODS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (fake CuPy)")
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *args, **kwargs: _call(attr, args, kwargs, f"ndarray.{name}")
        return _wrap(attr) if isinstance(attr, np.ndarray) else attr


class _Ufunc:
    """A NumPy ufunc as CuPy exposes it: device arrays and scalars in, only CuPy's keywords accepted."""

    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kwargs):
        extra = set(kwargs) - UFUNC_KWARGS
        if extra:
            raise TypeError(f"cupy.{self.__name__}: no {sorted(extra)} keyword "
                            f"(CuPy's ufuncs take {sorted(UFUNC_KWARGS)})")
        return _call(self._uf, args, kwargs, f"cupy.{self.__name__}")

    def reduce(self, *args, **kwargs):
        extra = set(kwargs) - REDUCE_KWARGS
        if extra:
            raise TypeError(f"cupy.{self.__name__}.reduce: no {sorted(extra)} keyword")
        return _call(self._uf.reduce, args, kwargs, f"cupy.{self.__name__}.reduce")

    def at(self, *args, **kwargs):
        return _call(self._uf.at, args, kwargs, f"cupy.{self.__name__}.at")


class ElementwiseKernel:
    """cupy.ElementwiseKernel for the kernels minift writes (minift/fast/kernels.py), evaluated with NumPy.

    The body is read as a list of statements and each one is run over whole arrays, in order, with NumPy's float
    arithmetic in the arrays' dtype: the same operations in the same order as a reference chain of array lines gives
    the same bits. Only the subset of CUDA C that minift/fast/kernels.py allows is accepted; anything else (a double
    literal inside an expression, an integer literal beside `/`, an assignment to an input or a const, a name CUDA
    reserves, a ternary, indexing, non-ASCII text) is refused with the reason, so that a body that would not
    compile, or would compute other numbers (in double, or by integer division) on a GPU, fails here first. Every
    assignment rounds to its target's type, as in C.
    Parameters: "T name" (T the one dtype all T arrays share; scalars cast to it) or a NumPy dtype name. Outputs may
    be passed after the inputs (all of them), and are then read and written in place, as CuPy does."""

    FUNCTIONS = {"tanh": np.tanh, "sqrt": np.sqrt, "exp": np.exp}
    RESERVED = frozenset({"i", "n", "half", "float", "double", "int", "bool", "char", "long", "short", "signed",
                          "unsigned", "auto", "const", "return", "if", "else", "for", "while"})
    STATEMENT = re.compile(r"^(?:(const\s+)?([A-Za-z_]\w*)\s+)?([A-Za-z_]\w*)\s*=\s*(.+)$", re.S)
    EXPRESSION = re.compile(r"^[\w\s.+\-*/()]+$")
    C_NUMBER = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?$")
    FLOAT_LITERAL = re.compile(r"(?<![\w.])(\d+\.\d*|\.\d+|\d+[eE])")
    INT_DIVISION = re.compile(r"/\s*\d|(?<![\w.])\d+\s*/")      # 1 / 2 is 0 in C, 0.5 in Python

    def __init__(self, in_params, out_params, operation, name="kernel", **options):
        self.name = name
        self.ins, self.outs = self._params(in_params), self._params(out_params)
        self.program = self._compile(operation)

    def _refuse(self, why):
        raise NotImplementedError(f"kernel {self.name}: {why}")

    def _params(self, text):
        params = []
        for part in text.split(","):
            kind, pname = part.split()
            if pname in self.RESERVED or pname.startswith("_"):
                self._refuse(f"parameter name {pname!r} is reserved in CUDA/CuPy")
            params.append((kind, pname))
        return params

    def _compile(self, operation):
        """The body as [(target, its declared type: "T" or a dtype name, compiled expression)], or a refusal."""
        if not operation.isascii():
            self._refuse("non-ASCII text in the body")
        text = re.sub(r"//[^\n]*", "", operation)
        types = {p: kind for kind, p in self.ins + self.outs}
        read_only = {p for _, p in self.ins}                    # CuPy declares inputs const
        program = []
        for stmt in (st.strip() for st in text.split(";")):
            if not stmt:
                continue
            m = self.STATEMENT.match(stmt)
            if m is None:
                self._refuse(f"cannot read the statement {stmt!r}")
            const, ctype, target, expr = m.groups()
            expr = expr.strip()
            if target in self.RESERVED or target.startswith("_"):
                self._refuse(f"{target!r} is reserved in CUDA/CuPy")
            if ctype is not None and ctype != "T":
                self._refuse(f"declare local names as T, not {ctype}")
            if ctype is None and target not in types:
                self._refuse(f"{target!r} is assigned before it is declared")
            if ctype is not None and target in types:
                self._refuse(f"{target!r} is declared twice")
            if target in read_only:
                self._refuse(f"{target!r} is an input or a const: it cannot be assigned")
            if const:
                if not self.C_NUMBER.match(expr):
                    self._refuse(f"a const T takes a plain number, not {expr!r}")
                read_only.add(target)
            else:
                if not self.EXPRESSION.match(expr):
                    self._refuse(f"unsupported syntax in {expr!r}")
                if self.FLOAT_LITERAL.search(expr):
                    self._refuse(f"a floating literal in {expr!r} is a C double; declare it as a const T")
                if self.INT_DIVISION.search(expr):
                    self._refuse(f"an integer literal beside / in {expr!r} (1 / 2 is 0 in C); declare a const T")
                for word in re.findall(r"[A-Za-z_]\w*", expr):
                    if word not in types and word not in self.FUNCTIONS:
                        self._refuse(f"unknown name {word!r} in {expr!r}")
            types.setdefault(target, "T")
            program.append((target, types[target], compile(expr, f"<{self.name}>", "eval")))
        return program

    def __call__(self, *args):
        n_in, n_out = len(self.ins), len(self.outs)
        if len(args) not in (n_in, n_in + n_out):
            raise TypeError(f"kernel {self.name}: takes {n_in} inputs (and optionally all {n_out} outputs), "
                            f"got {len(args)} arguments")
        LAUNCHES.add(self.name)
        arrays = [_unwrap(a, f"kernel {self.name}") for a in args]
        typed = [a for (kind, _), a in zip(self.ins + self.outs, arrays) if kind == "T" and isinstance(a, np.ndarray)]
        dtypes = {a.dtype for a in typed}
        if len(dtypes) != 1:
            raise TypeError(f"kernel {self.name}: the T arrays must share one dtype, got {sorted(map(str, dtypes))}")
        T = dtypes.pop()
        dtype_of = lambda kind: T if kind == "T" else np.dtype(kind)       # noqa: E731
        shape = np.broadcast_shapes(*(a.shape for a in arrays if isinstance(a, np.ndarray)))
        env = dict(self.FUNCTIONS)
        for (kind, pname), a in zip(self.ins + self.outs, arrays):
            if not isinstance(a, np.ndarray):
                a = dtype_of(kind).type(a)                      # a scalar parameter: cast to its declared type
            elif a.dtype != dtype_of(kind):
                raise TypeError(f"kernel {self.name}: {pname} is {a.dtype}, declared {dtype_of(kind)}")
            env[pname] = a
        outs = arrays[n_in:] or [np.empty(shape, dtype_of(kind)) for kind, _ in self.outs]
        for out in outs:
            if out.shape != shape:
                raise ValueError(f"kernel {self.name}: an output has shape {out.shape}, the broadcast shape is {shape}")
        for target, kind, code in self.program:                # every assignment rounds to the target's type, as C
            value = eval(code, {"__builtins__": {}}, env)
            env[target] = np.asarray(value).astype(dtype_of(kind), copy=False)[()]
        for (_, pname), out in zip(self.outs, outs):
            out[...] = env[pname]
        results = tuple(args[n_in:]) if len(args) > n_in else tuple(DeviceArray(o) for o in outs)
        return results[0] if n_out == 1 else results


class _Namespace(types.SimpleNamespace):
    """cupy, cupy.linalg, ...: NumPy's names over device arrays."""

    def __init__(self, np_module, prefix):
        super().__init__()
        object.__setattr__(self, "_np", np_module)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name):
        if name.startswith("__") or name in MISSING_IN_CUPY:
            raise AttributeError(f"module '{self._prefix}' has no attribute {name!r} (CuPy 14 lacks it; fake CuPy)")
        try:
            attr = getattr(self._np, name)
        except AttributeError:
            raise AttributeError(f"fake CuPy does not model {self._prefix}.{name}") from None
        if isinstance(attr, np.ufunc):
            return _Ufunc(attr)
        if isinstance(attr, type) or not callable(attr):
            return attr                                       # dtypes, constants: CuPy re-exports NumPy's
        return lambda *args, **kwargs: _call(attr, args, kwargs, f"{self._prefix}.{name}")


class _Device:
    """cupy.cuda.Device(): the fake has one, always idle."""

    def __init__(self, device_id=0):
        self.id = device_id

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeCupy(_Namespace):
    """The `cupy` module's stand-in."""

    def __init__(self):
        super().__init__(np, "cupy")
        object.__setattr__(self, "__version__", VERSION)
        object.__setattr__(self, "ndarray", DeviceArray)
        object.__setattr__(self, "ElementwiseKernel", ElementwiseKernel)
        object.__setattr__(self, "linalg", _Namespace(np.linalg, "cupy.linalg"))
        object.__setattr__(self, "cuda", types.SimpleNamespace(Device=_Device, MemoryHook=MemoryHook))

    @staticmethod
    def get_default_memory_pool():
        return _POOL

    @staticmethod
    def asarray(a, dtype=None, order=None):
        """Host -> device (a copy: the two never share memory), or a device array as it is (cast if dtype differs)."""
        if isinstance(a, DeviceArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else DeviceArray(a._a.astype(dtype))
        if isinstance(a, (list, tuple)):
            a = [v._a if isinstance(v, DeviceArray) else v for v in a]
        return DeviceArray(np.array(a, dtype=dtype, copy=True))

    @staticmethod
    def array(a, dtype=None, copy=True, order="K"):
        """cupy.array: like asarray, but copies a device array too unless copy=False."""
        if isinstance(a, DeviceArray) and copy:
            return DeviceArray(a._a.astype(dtype if dtype is not None else a.dtype, copy=True))
        return FakeCupy.asarray(a, dtype=dtype)

    @staticmethod
    def asnumpy(a):
        if isinstance(a, DeviceArray):
            _transfer()
            return a._a.copy()
        return np.asarray(a)


def fake_cupyx():
    """The `cupyx` module's stand-in: only scatter_add, the one thing minift takes from it."""
    def scatter_add(target, indices, values):
        if not isinstance(target, DeviceArray):
            raise TypeError("cupyx.scatter_add: the target must be a device array")
        np.add.at(target._a, _unwrap(indices, "cupyx.scatter_add"), _unwrap(values, "cupyx.scatter_add"))
    return types.SimpleNamespace(scatter_add=scatter_add)


def install():
    """Make device="gpu" mean the fake for the rest of this process (for a script; tests use the fake_gpu fixture,
    which undoes it). Returns the fake module."""
    import sys
    from minift import backend
    fake = FakeCupy()
    backend._cupy, backend._cupy_error = fake, None
    sys.modules["cupyx"] = fake_cupyx()
    return fake
