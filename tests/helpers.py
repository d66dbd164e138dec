"""Shared helpers for the juanji op tests: tolerances, comparisons, memory layouts,
finite-difference gradients and seeded random shape generators.

Nothing here imports juanji at module level (only ``to_tensor`` does, lazily), so the
helpers and ``reference.py`` stay usable on their own.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference as ref

# ---------------------------------------------------------------------------------
# SIMD levels
# ---------------------------------------------------------------------------------

def cpu_simd_levels() -> list[str]:
    """The SIMD levels this CPU runs, lowest first: those at or below the detected one."""
    import juanji

    order = ["portable", "avx2", "avx512"]
    return order[: order.index(juanji.simd_detected()) + 1]


# ---------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------
# Results are compared with the float64 NumPy reference computed from the *same*
# input values (float32 inputs are upcast exactly), so the only differences are the
# library's own rounding errors.  Every comparison is absolute with
#     atol = RTOL[dtype] * max|reference|
# i.e. relative to the magnitude scale of the whole output, not element-wise: an
# element that is small only because of cancellation still carries rounding error of
# the size of the terms that cancelled, and the terms are at most ~max|ref| here
# (inputs are O(1) random values and reductions are a few hundred terms long).
#
# float64: unit roundoff 1.1e-16.  A sum of n terms in any order is off by at most
#   ~n*u times the sum of |terms| (typically sqrt(n)*u); the longest reductions in these
#   tests are ~2000 terms, giving <= ~2e-13 relative.  1e-12 leaves a 5x margin over that
#   worst case while still catching any real indexing / boundary bug (those are O(1)).
# float32: unit roundoff 6.0e-8.  Same argument: sqrt(n)*u ~ 3e-6 worst realistic, with
#   typical errors ~1e-7; 1e-5 allows blocked / SIMD / multi-threaded summation orders
#   and float32 exp/log in the activations (a few ulp), and is still ~1e5 times below
#   the size of any wrong-index error.
RTOL = {
    np.dtype(np.float32): 1e-5,
    np.dtype(np.float64): 1e-12,
}
# Finite differences (float64 only): central differences with step FD_STEP have
# truncation error ~h^2 |f'''|/6 ~ 1e-10 for the smooth ops (zero for the linear ones:
# conv, linear, average pooling) and rounding error ~u*|L|/h ~ 1e-16*10/1e-5 = 1e-10.
# Both are far below FD_RTOL; anything at 1e-6 or above is a wrong gradient.  For the
# piecewise-linear ops (relu, leaky relu, max pool) the inputs are kept at least 1e-3
# away from the kinks / ties so the step never crosses one.
FD_STEP = 1e-5
FD_RTOL = 1e-6

DTYPES = [
    pytest.param(np.float32, id="f32"),
    pytest.param(np.float64, id="f64"),
]


def as_np(t) -> np.ndarray:
    """A juanji Tensor (or anything array-like) as a NumPy array."""
    return np.asarray(t)


def tol(dtype) -> float:
    return RTOL[np.dtype(dtype)]


def assert_close(actual, expected, dtype, *, rtol: float | None = None, what: str = "") -> None:
    """actual (a juanji result) has dtype `dtype`, the reference's shape, and
    |actual - expected| <= rtol * max|expected| element-wise (NaNs must match)."""
    a = as_np(actual)
    e = np.asarray(expected, dtype=np.float64)
    assert a.dtype == np.dtype(dtype), f"{what}: dtype {a.dtype}, expected {np.dtype(dtype)}"
    assert a.shape == e.shape, f"{what}: shape {a.shape}, expected {e.shape}"
    if rtol is None:
        rtol = tol(dtype)
    finite = np.isfinite(e)
    scale = float(np.max(np.abs(e[finite]))) if finite.any() else 0.0
    atol = rtol * max(scale, np.finfo(np.dtype(dtype)).tiny)
    np.testing.assert_allclose(
        a.astype(np.float64), e, rtol=0.0, atol=atol, equal_nan=True, err_msg=what
    )


def assert_bitwise(actual, expected_f64, dtype=np.float32, what: str = "") -> None:
    """Bit-identical (as values) to the float64 reference rounded to `dtype`."""
    a = as_np(actual)
    assert a.dtype == np.dtype(dtype), f"{what}: dtype {a.dtype}"
    e = np.asarray(expected_f64, dtype=np.float64).astype(dtype)
    assert a.shape == e.shape, f"{what}: shape {a.shape}, expected {e.shape}"
    np.testing.assert_array_equal(a, e, err_msg=what)


# ---------------------------------------------------------------------------------
# Data and memory layouts
# ---------------------------------------------------------------------------------

def randn(rng: np.random.Generator, shape, dtype=np.float64) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def randint_data(rng: np.random.Generator, shape, dtype=np.float32, lo=-3, hi=4) -> np.ndarray:
    """Small integers stored as floats: every product and every sum of them in these
    tests stays far below 2^24, so any summation order gives the exact float32 result."""
    return rng.integers(lo, hi, size=shape).astype(dtype)


def distinct_values(rng: np.random.Generator, shape, gap=0.01) -> np.ndarray:
    """float64 array of distinct values at least `gap` apart (shuffled), so max pooling
    has no ties and a finite-difference step never changes the winner."""
    n = int(np.prod(shape))
    v = (np.arange(n) - n / 2) * gap
    return rng.permutation(v).reshape(shape)


def away_from_zero(rng: np.random.Generator, shape, margin=1e-2) -> np.ndarray:
    """float64 normals with |x| >= margin (keeps relu-type kinks away from FD steps)."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.copysign(margin, x) + x, x)


LAYOUTS = ["C", "F", "sliced", "transposed", "reversed", "tensor"]


def layout(a: np.ndarray, kind: str):
    """The same values as `a` in another memory layout (or wrapped as a juanji Tensor).

    C          contiguous copy
    F          Fortran order
    sliced     a view with stride 2 along the last axis  (like x[:, :, ::2])
    transposed a transposed view of a contiguous buffer: channels-last memory for
               >= 3-D arrays (the NHWC view of an NCHW tensor), plain .T for 2-D
    reversed   a negative-stride view (x[..., ::-1] of a reversed copy)
    tensor     juanji.from_numpy of a C-contiguous copy
    """
    a = np.asarray(a)
    if kind == "C":
        return np.ascontiguousarray(a)
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "sliced":
        base = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        base[..., ::2] = a
        return base[..., ::2]
    if kind == "transposed":
        if a.ndim >= 3:
            perm = (0,) + tuple(range(2, a.ndim)) + (1,)  # channels last in memory
            inv = tuple(np.argsort(perm))
            return np.ascontiguousarray(a.transpose(perm)).transpose(inv)
        return np.ascontiguousarray(a.T).T
    if kind == "reversed":
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    if kind == "tensor":
        return to_tensor(a)
    raise ValueError(kind)


def to_tensor(a):
    import juanji

    return juanji.from_numpy(np.ascontiguousarray(a))


# ---------------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------------

def projection_loss(out, R: np.ndarray) -> float:
    """L = sum(out * R): a random linear functional of the op's output, whose
    gradient w.r.t. the output is R (the grad_out fed to the backward)."""
    return float(np.sum(np.asarray(out, dtype=np.float64) * R))


def fd_grad(fun, x: np.ndarray, h: float = FD_STEP) -> np.ndarray:
    """Central differences of the scalar fun(x) w.r.t. every element of x (float64).
    fun gets a fresh C-contiguous copy each time."""
    x = np.array(x, dtype=np.float64, copy=True)
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        orig = x[idx]
        x[idx] = orig + h
        fp = fun(x.copy())
        x[idx] = orig - h
        fm = fun(x.copy())
        x[idx] = orig
        g[idx] = (fp - fm) / (2.0 * h)
    return g


def rel_error(a, b) -> float:
    """max|a - b| / max(max|a|, max|b|)  (0 when both are zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    denom = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    if denom == 0.0:
        return 0.0
    return float(np.max(np.abs(a - b))) / denom


def check_fd(forward, inputs: dict, analytic: dict, R: np.ndarray, h: float = FD_STEP) -> None:
    """For L = sum(forward(**inputs) * R), compare every analytic gradient
    (name -> array, as returned by the op's backward with grad_out = R) with central
    finite differences of L w.r.t. inputs[name]."""
    for name, g in analytic.items():
        def fun(v, _name=name):
            args = dict(inputs)
            args[_name] = v
            return projection_loss(forward(**args), R)

        num = fd_grad(fun, inputs[name], h)
        g = as_np(g)
        assert g.shape == num.shape, f"grad {name}: shape {g.shape}, expected {num.shape}"
        err = rel_error(g, num)
        assert err < FD_RTOL, f"grad {name}: relative error {err:.3e} vs finite differences"


# ---------------------------------------------------------------------------------
# Seeded random shape generators (deterministic: fixed seeds, evaluated at collection)
# ---------------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, tuple):
        return "x".join(str(e) for e in v)
    return str(v)


def conv_case_id(c: dict) -> str:
    return (
        f"N{c['N']}C{c['C']}K{c['K']}g{c['groups']}-in{_fmt(c['spatial'])}-k{_fmt(c['kernel'])}"
        f"-s{_fmt(c['stride'])}-p{_fmt(c['padding'])}-d{_fmt(c['dilation'])}"
    )


def conv_out_spatial(c: dict) -> tuple[int, ...]:
    nd = len(c["spatial"])

    def tup(v):
        return (v,) * nd if isinstance(v, int) else tuple(v)

    stride, dilation = tup(c["stride"]), tup(c["dilation"])
    pads = ref.resolve_conv_padding(c["padding"], c["spatial"], c["kernel"], stride, dilation)
    return tuple(
        ref.conv_output_size(n, f, s, b, a, d)
        for n, f, s, (b, a), d in zip(c["spatial"], c["kernel"], stride, pads, dilation)
    )


def random_conv_cases(nd: int, count: int, seed: int, max_in: int = 10, max_k: int = 4) -> list:
    """`count` valid conv configurations (pytest.params with readable ids) covering
    groups / depthwise (K = C and K = 2C), stride > kernel, padding up to half the
    kernel (int, tuple, 'same', 'valid'), dilation 1-3, batch 1, 1-wide outputs."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        kind = rng.choice(["plain", "grouped", "depthwise", "depthwise2"], p=[0.5, 0.2, 0.15, 0.15])
        if kind == "plain":
            G, Cg, Kg = 1, int(rng.integers(1, 5)), int(rng.integers(1, 5))
        elif kind == "grouped":
            G, Cg, Kg = int(rng.integers(2, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
        else:
            G, Cg, Kg = int(rng.integers(1, 5)), 1, (1 if kind == "depthwise" else 2)
        kernel = tuple(int(v) for v in rng.integers(1, max_k + 1, size=nd))
        spatial = tuple(int(v) for v in rng.integers(1, max_in + 1, size=nd))
        stride = tuple(int(v) for v in rng.choice([1, 1, 2, 3, 5], size=nd))
        dilation = tuple(int(v) for v in rng.choice([1, 1, 2, 3], size=nd))
        pk = rng.choice(["int", "tuple", "same", "valid"], p=[0.35, 0.35, 0.2, 0.1])
        if pk == "int":
            padding = int(rng.integers(0, min(kernel) // 2 + 1))
        elif pk == "tuple":
            padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        else:
            padding = str(pk)
        # scalar forms for stride / dilation half of the time
        if rng.random() < 0.5 and len(set(stride)) == 1:
            stride = stride[0]
        if rng.random() < 0.5 and len(set(dilation)) == 1:
            dilation = dilation[0]
        c = dict(N=int(rng.choice([1, 1, 2, 3])), C=G * Cg, K=G * Kg, groups=G, spatial=spatial,
                 kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                 bias=bool(rng.random() < 0.7))
        if min(conv_out_spatial(c)) < 1:
            continue
        cases.append(pytest.param(c, id=f"r{len(cases):02d}-{conv_case_id(c)}"))
    return cases


def conv_kwargs(c: dict) -> dict:
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])


def pool_case_id(c: dict) -> str:
    s = (f"N{c['N']}C{c['C']}-in{_fmt(c['spatial'])}-k{_fmt(c['kernel_size'])}"
         f"-s{_fmt(c['stride'])}-p{_fmt(c['padding'])}")
    if c.get("ceil_mode"):
        s += "-ceil"
    if not c.get("count_include_pad", True):
        s += "-nopadcount"
    return s


def pool_out_spatial(c: dict) -> tuple[int, ...]:
    nd = len(c["spatial"])

    def tup(v):
        return (v,) * nd if isinstance(v, int) else tuple(v)

    k = tup(c["kernel_size"])
    s = k if c["stride"] is None else tup(c["stride"])
    p = tup(c["padding"])
    return tuple(
        ref.pool_output_size(n, ki, si, pi, c["ceil_mode"])
        for n, ki, si, pi in zip(c["spatial"], k, s, p)
    )


def random_pool_cases(nd: int, count: int, seed: int, max_in: int = 11) -> list:
    """`count` valid pooling configurations: stride None / < / = / > kernel, padding up
    to half the kernel, ceil_mode, count_include_pad, non-square kernels."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        kernel = tuple(int(v) for v in rng.integers(1, 5, size=nd))
        r = rng.random()
        stride = None if r < 0.2 else tuple(int(v) for v in rng.integers(1, 6, size=nd))
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        spatial = tuple(int(v) for v in rng.integers(1, max_in + 1, size=nd))
        if rng.random() < 0.4 and len(set(kernel)) == 1:
            kernel = kernel[0]
        if stride is not None and rng.random() < 0.4 and len(set(stride)) == 1:
            stride = stride[0]
        if rng.random() < 0.4 and len(set(padding)) == 1:
            padding = padding[0]
        c = dict(N=int(rng.choice([1, 2, 3])), C=int(rng.integers(1, 4)), spatial=spatial,
                 kernel_size=kernel, stride=stride, padding=padding,
                 ceil_mode=bool(rng.random() < 0.5), count_include_pad=bool(rng.random() < 0.5))
        if min(pool_out_spatial(c)) < 1:
            continue
        cases.append(pytest.param(c, id=f"r{len(cases):02d}-{pool_case_id(c)}"))
    return cases


def random_dims(rng: np.random.Generator, ndim: int, lo: int = 1, hi: int = 8) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers(lo, hi + 1, size=ndim))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [
    "RTOL", "FD_STEP", "FD_RTOL", "DTYPES", "LAYOUTS",
    "as_np", "tol", "assert_close", "assert_bitwise",
    "randn", "randint_data", "distinct_values", "away_from_zero", "layout", "to_tensor",
    "projection_loss", "fd_grad", "rel_error", "check_fd",
    "conv_case_id", "conv_out_spatial", "random_conv_cases", "conv_kwargs",
    "pool_case_id", "pool_out_spatial", "random_pool_cases", "random_dims", "ceil_div",
]
