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
would sit idle while the host catches up. It runs minift's CUDA kernels, the fused ones (minift/fast/kernels.py)
and the dequantisation's (fast/dequant.py, with raw arrays read at an index), through `ElementwiseKernel`, which
evaluates their CUDA C bodies with NumPy, one statement over all threads at a time, in C's types, and refuses
anything outside the small subset of C those bodies are allowed (so a body that would not compile, or that computes
in double, fails here first), and it counts kernel launches (`LAUNCHES`), the host-side cost of a GPU step. What it
cannot check: CUDA compilation, numerics, speed, streams, true GPU memory. The arithmetic is NumPy's, so results on
the fake device are bitwise those of the CPU path: a test can compare the two exactly.

Use it through the `fake_gpu` fixture (conftest.py), which makes `device="gpu"` resolve to this module.
"""
from __future__ import annotations

import math
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


FLOATING = frozenset({"T", "float16", "float32", "float64"})
C_TYPES = {"T": "T", "float": "float32", "int": "int32", "unsigned char": "uint8"}   # local declarations allowed


def _c_type(*types):
    """C's usual arithmetic conversions on static types ("T", a dtype name, "literal" for an integer literal): the
    type a binary operation computes in. Integers narrower than int are promoted to int first, as C promotes them."""
    floats = [t for t in types if t in FLOATING]
    if floats:
        return "T" if "T" in floats else str(np.result_type(*floats))
    ints = ["int32" if t == "literal" else t for t in types]
    return str(np.promote_types(np.result_type(*ints), np.int32))


def _c_dtype(types, T):
    """_c_type with T resolved: the dtype of a C operation on values of these static types."""
    return np.dtype(_c_type(*(T.name if t == "T" else t for t in types)))


def _c_convert(T, *values):
    """The operands of one C operation, each converted to the type C computes it in (_c_type, with T resolved).
    Python ints are the body's integer literals (C ints)."""
    dtype = _c_dtype(["literal" if isinstance(v, int) else v.dtype.name for v in values], T)
    return [dtype.type(v) if isinstance(v, int) else v.astype(dtype, copy=False) for v in values]


def _c_divide(a, b):
    """C's `/`: true division for floating operands, for integers the quotient truncated toward zero."""
    if a.dtype.kind == "f":
        return np.true_divide(a, b)
    return (a - _c_remainder(a, b)) // b                  # an exact multiple of b: // is exact


def _c_remainder(a, b):
    """C's `%` on integers: the sign of the dividend (NumPy's `%` takes the divisor's)."""
    if np.any(b == 0):
        raise ZeroDivisionError("integer division by zero in a kernel (undefined in C)")
    return np.fmod(a, b)


class _CExpression:
    """One expression of a kernel body, parsed by recursive descent in C's precedence (low to high: `?:`, `&`,
    `==`, `>>`, `+ -`, `* / %`, unary `-` and casts, then indexing and calls) and compiled to a function of the
    environment (names -> NumPy arrays or scalars, one value per thread). Each node has a static C type, so that
    what would not compile, or would compute other numbers than the lines the kernel replaces, is refused here."""

    TOKEN = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+[eE])|(\d+)|([A-Za-z_]\w*)|(>>|==|[-+*/%&?:()\[\]]))")
    BINARY = {"&": (np.bitwise_and, "integers"), "==": (np.equal, None), ">>": (np.right_shift, "integers"),
              "+": (np.add, None), "-": (np.subtract, None), "*": (np.multiply, None), "/": (_c_divide, None),
              "%": (_c_remainder, "integers")}
    LEVELS = (("&",), ("==",), (">>",), ("+", "-"), ("*", "/", "%"))      # binary operators, low to high

    def __init__(self, kernel, text, types, raw):
        self.kernel, self.text, self.types, self.raw = kernel, text, types, raw
        self.tokens, pos, text = [], 0, text.rstrip()
        while pos < len(text):
            m = self.TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                self.refuse(f"unsupported syntax in {self.text!r}")
            if m.group(1):
                self.refuse(f"a floating literal in {self.text!r} is a C double; declare it as a const T")
            self.tokens.append(int(m.group(2)) if m.group(2) else m.group(3) or m.group(4))
            pos = m.end()
        self.type, self.evaluate = self.ternary()
        if self.tokens:
            self.refuse(f"unsupported syntax in {self.text!r} (at {self.tokens[0]!r})")

    def refuse(self, why):
        self.kernel._refuse(why)

    def peek(self):
        return self.tokens[0] if self.tokens else None

    def take(self, token=None):
        if not self.tokens or (token is not None and self.tokens[0] != token):
            self.refuse(f"unsupported syntax in {self.text!r} (expected {token or 'more'})")
        return self.tokens.pop(0)

    def ternary(self):
        """cond ? a : b. Only the branch each thread takes is evaluated, on those threads' values alone (a raw read
        in the other branch may be out of bounds, as in C)."""
        cond_type, cond = self.binary(0)
        if self.peek() != "?":
            return cond_type, cond
        self.take("?")
        a_type, a = self.ternary()
        self.take(":")
        b_type, b = self.ternary()
        raw = self.raw

        def lanes(env, keep):
            """The environment of the threads where keep is true: per-thread values cut down to theirs."""
            return {k: v[keep] if k not in raw and isinstance(v, np.ndarray) and v.shape == keep.shape else v
                    for k, v in env.items()}

        def choose(env):
            c, dtype = cond(env), _c_dtype((a_type, b_type), env["(T)"])
            if np.ndim(c) == 0:                                         # the same for every thread
                return np.asarray((a if c else b)(env)).astype(dtype)[()]
            taken = c != 0
            out = np.empty(taken.shape, dtype)
            out[taken], out[~taken] = a(lanes(env, taken)), b(lanes(env, ~taken))
            return out
        return _c_type(a_type, b_type), choose

    def binary(self, level):
        if level == len(self.LEVELS):
            return self.unary()
        left_type, left = self.binary(level + 1)
        while self.peek() in self.LEVELS[level]:
            op = self.take()
            right_type, right = self.binary(level + 1)
            func, needs = self.BINARY[op]
            if needs == "integers" and (left_type in FLOATING or right_type in FLOATING):
                self.refuse(f"{op} takes integers in {self.text!r}")
            if op == "/" and "literal" in (left_type, right_type) and {left_type, right_type} & FLOATING:
                self.refuse(f"an integer literal beside / in {self.text!r} (1 / 2 is 0 in C); declare a const T")
            if op == "/" and left_type == right_type == "literal":
                self.refuse(f"an integer literal beside / in {self.text!r} (1 / 2 is 0 in C): write the number")
            if op == ">>":                                              # the type of a shift is its left operand's
                left_type, left = _c_type(left_type), self.shift(left, right)
                continue
            left_type = "bool" if op == "==" else _c_type(left_type, right_type)
            left = self.operation(func, left, right)
        return left_type, left

    @staticmethod
    def operation(func, left, right):
        return lambda env: func(*_c_convert(env["(T)"], left(env), right(env)))

    @staticmethod
    def shift(left, right):
        def evaluate(env):
            a, = _c_convert(env["(T)"], left(env))                     # promoted to int at least
            return np.right_shift(a, np.asarray(right(env)).astype(a.dtype))
        return evaluate

    def unary(self):
        if self.peek() == "-":
            self.take()
            t, f = self.unary()
            return _c_type(t), lambda env: np.negative(_c_convert(env["(T)"], f(env))[0])
        if self.peek() == "(" and self.cast_type() is not None:
            ctype = self.cast_type()
            for _ in range(len(ctype.split()) + 2):
                self.take()
            t, f = self.unary()
            target = C_TYPES[ctype]
            return target, lambda env: np.asarray(f(env)).astype(env["(T)"] if target == "T" else target)[()]
        return self.postfix()

    def cast_type(self):
        """`(T)`, `(float)`, `(int)`, `(unsigned char)` at the head of the tokens: that type's name, else None."""
        for ctype in C_TYPES:
            words = ctype.split()
            if self.tokens[1:len(words) + 2] == words + [")"]:
                return ctype
        return None

    def postfix(self):
        token = self.take()
        if token == "(":
            node = self.ternary()
            self.take(")")
            return node
        if isinstance(token, int):
            return "literal", lambda env: token
        if not isinstance(token, str) or not (token[0].isalpha() or token[0] == "_"):
            self.refuse(f"unsupported syntax in {self.text!r} (at {token!r})")
        if token in ElementwiseKernel.FUNCTIONS:
            return self.call(token)
        if self.peek() == "[":
            return self.index(token)
        if token in self.raw:
            self.refuse(f"{token!r} is a raw array in {self.text!r}: read one element, {token}[index]")
        if token != "i" and token not in self.types:
            self.refuse(f"unknown name {token!r} in {self.text!r}")
        return ("int64" if token == "i" else self.types[token]), lambda env: env[token]

    def call(self, name):
        self.take("(")
        t, f = self.ternary()
        self.take(")")
        if t not in FLOATING:
            self.refuse(f"{name} takes a floating value in {self.text!r}")
        func = ElementwiseKernel.FUNCTIONS[name]
        return t, lambda env: func(f(env))

    def index(self, name):
        if name not in self.raw:
            self.refuse(f"unsupported syntax in {self.text!r}: only a raw parameter is an array to index, not {name!r}")
        self.take("[")
        t, f = self.ternary()
        self.take("]")
        if t in FLOATING:
            self.refuse(f"the index of {name} in {self.text!r} is not an integer")
        kernel = self.kernel

        def read(env):
            flat, at = env[name], np.asarray(f(env))
            if at.size and (at.min() < 0 or at.max() >= flat.size):
                raise IndexError(f"kernel {kernel.name}: {name}[{at.min()}..{at.max()}] is outside its {flat.size} "
                                 "elements (a GPU would read other memory)")
            return flat[at]
        return self.types[name], read


class ElementwiseKernel:
    """cupy.ElementwiseKernel for the kernels minift writes (minift/fast/kernels.py, fast/dequant.py), evaluated
    with NumPy.

    The body is read as a list of statements and each one is run over all threads at once (NumPy arrays, one value
    per thread), in order, in the types C gives its operations: the same float operations in the same order as a
    reference chain of array lines gives the same bits. Only a subset of CUDA C is accepted; anything else (a
    double literal inside an expression, an integer literal beside a floating `/`, an assignment to an input or a
    const, a T value into a float or int local, a name CUDA reserves, an operator outside `?: & == >> + - * / %`,
    non-ASCII text) is refused with the reason, so that a body that would not compile, or would compute other
    numbers (in double, or by integer division) on a GPU, fails here first. Every assignment rounds to its target's
    type, as in C; integers are divided and taken modulo as C does (toward zero).
    Statements: `T name = expr;`, `name = expr;`, `const T name = number;`, and locals of a fixed C type,
    `[const] float|int|unsigned char name = expr;`. Expressions: parameters, earlier locals, `i` (the thread's
    index, flat in C order over the output's shape), integer literals, `(T)`-style casts, tanh, sqrt, exp.
    Parameters: "T name" (T the one dtype all T arrays share; scalars cast to it) or a NumPy dtype name, either one
    after "raw": a raw parameter is a whole array, read as `name[index]` (flat, C order; an index outside it raises)
    and not broadcast. Outputs may be passed after the inputs (all of them), and are then read and written in place,
    as CuPy does; without them, the output's shape is the broadcast of the inputs that are not raw."""

    FUNCTIONS = {"tanh": np.tanh, "sqrt": np.sqrt, "exp": np.exp}
    RESERVED = frozenset({"i", "n", "half", "float", "double", "int", "bool", "char", "long", "short", "signed",
                          "unsigned", "auto", "const", "return", "if", "else", "for", "while", "T"})
    STATEMENT = re.compile(r"^(?:(const\s+)?(unsigned\s+char|[A-Za-z_]\w*)\s+)?([A-Za-z_]\w*)\s*=\s*(.+)$", re.S)
    C_NUMBER = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?$")

    def __init__(self, in_params, out_params, operation, name="kernel", **options):
        self.name = name
        self.ins, self.outs = self._params(in_params), self._params(out_params)
        if any(raw for _, _, raw in self.outs):
            self._refuse("raw outputs (written at an index) are not modelled")
        self.program = self._compile(operation)

    def _refuse(self, why):
        raise NotImplementedError(f"kernel {self.name}: {why}")

    def _params(self, text):
        """"T x, raw float32 v" -> [(kind: "T" or a dtype name, name, raw?)]."""
        params = []
        for part in text.split(","):
            words = part.split()
            raw = words[0] == "raw"
            kind, pname = words[raw:]
            if pname in self.RESERVED or pname.startswith("_"):
                self._refuse(f"parameter name {pname!r} is reserved in CUDA/CuPy")
            params.append(("T" if kind == "T" else np.dtype(kind).name, pname, raw))
        return params

    def _compile(self, operation):
        """The body as [(target, its type: "T" or a dtype name, f(env) -> value)], or a refusal."""
        if not operation.isascii():
            self._refuse("non-ASCII text in the body")
        text = re.sub(r"//[^\n]*", "", operation)
        self.uses_i = re.search(r"\bi\b", text) is not None
        if re.search(r"\bT\b", text) and all(kind != "T" for kind, _, _ in self.ins + self.outs):
            self._refuse("the body names T, and no parameter is a T")
        types = {p: kind for kind, p, _ in self.ins + self.outs}
        raw = frozenset(p for _, p, is_raw in self.ins if is_raw)
        read_only = {p for _, p, _ in self.ins}                      # CuPy declares inputs const
        program = []
        for stmt in (st.strip() for st in text.split(";")):
            if not stmt:
                continue
            m = self.STATEMENT.match(stmt)
            if m is None:
                self._refuse(f"cannot read the statement {stmt!r}")
            const, ctype, target, expr = m.groups()
            ctype, expr = ctype and " ".join(ctype.split()), expr.strip()
            if target in self.RESERVED or target.startswith("_"):
                self._refuse(f"{target!r} is reserved in CUDA/CuPy")
            if ctype is not None and ctype not in C_TYPES:
                self._refuse(f"declare local names as T (or float, int, unsigned char), not {ctype}")
            if ctype is None and target not in types:
                self._refuse(f"{target!r} is assigned before it is declared")
            if ctype is not None and target in types:
                self._refuse(f"{target!r} is declared twice")
            if target in read_only:
                self._refuse(f"{target!r} is an input or a const: it cannot be assigned")
            kind = types[target] if ctype is None else C_TYPES[ctype]
            if const and self.C_NUMBER.match(expr):                    # a constant, rounded once to its type
                value = float(expr) if re.search(r"[.eE]", expr) else int(expr)
                evaluate = lambda env, value=value: value               # noqa: E731
            elif const and ctype == "T":
                self._refuse(f"a const T takes a plain number, not {expr!r}")
            else:
                e = _CExpression(self, expr, types, raw)
                if kind != "T" and e.type == "T" or kind not in FLOATING and e.type in FLOATING:
                    self._refuse(f"{target!r} is {kind} and {expr!r} is {e.type}, which it would round (T may be "
                                 "double): declare local names as T, or cast")
                evaluate = e.evaluate
            if const:
                read_only.add(target)
            types[target] = kind
            program.append((target, kind, evaluate))
        return program

    def __call__(self, *args):
        n_in, n_out = len(self.ins), len(self.outs)
        if len(args) not in (n_in, n_in + n_out):
            raise TypeError(f"kernel {self.name}: takes {n_in} inputs (and optionally all {n_out} outputs), "
                            f"got {len(args)} arguments")
        LAUNCHES.add(self.name)
        params, arrays = self.ins + self.outs, [_unwrap(a, f"kernel {self.name}") for a in args]
        dtypes = {a.dtype for (kind, _, _), a in zip(params, arrays) if kind == "T" and isinstance(a, np.ndarray)}
        if len(dtypes) != any(kind == "T" for kind, _, _ in params):
            raise TypeError(f"kernel {self.name}: the T arrays must share one dtype, got {sorted(map(str, dtypes))}")
        T = dtypes.pop() if dtypes else None
        dtype_of = lambda kind: T if kind == "T" else np.dtype(kind)       # noqa: E731
        lanes = [a for (_, _, raw), a in zip(params, arrays) if not raw and isinstance(a, np.ndarray)]
        if not lanes:
            raise TypeError(f"kernel {self.name}: no array that is not raw gives the size "
                            "(CuPy's size= is not modelled)")
        shape = np.broadcast_shapes(*(a.shape for a in lanes))
        env = {"(T)": T}
        if self.uses_i:                                         # i: ptrdiff_t, the thread's flat index
            env["i"] = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
        for (kind, pname, raw), a in zip(params, arrays):
            if not isinstance(a, np.ndarray):
                if raw:
                    raise TypeError(f"kernel {self.name}: raw {pname} must be a device array")
                a = dtype_of(kind).type(a)                      # a scalar parameter: cast to its declared type
            elif a.dtype != dtype_of(kind):
                raise TypeError(f"kernel {self.name}: {pname} is {a.dtype}, declared {dtype_of(kind)}")
            env[pname] = a.reshape(-1) if raw else np.broadcast_to(a, shape) if isinstance(a, np.ndarray) else a
        outs = arrays[n_in:] or [np.empty(shape, dtype_of(kind)) for kind, _, _ in self.outs]
        for out in outs:
            if out.shape != shape:
                raise ValueError(f"kernel {self.name}: an output has shape {out.shape}, the broadcast shape is {shape}")
        for target, kind, evaluate in self.program:            # every assignment rounds to the target's type, as C
            env[target] = np.asarray(evaluate(env)).astype(dtype_of(kind), copy=False)[()]
        for (_, pname, _), out in zip(self.outs, outs):
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
        object.__setattr__(self, "runs_raw_kernels", True)       # minift/fast/dequant.py asks: raw parameters run here
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
