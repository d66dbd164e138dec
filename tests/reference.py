"""Plain NumPy reference for every juanji op, written from the seed formulas.

Nothing here calls torch or scipy: each op is spelled out from the definitions in
``/work/shared/seeds`` (and SPEC.md), as directly as NumPy allows while staying fast
on the small shapes the tests use.  Every function

* accepts anything ``np.asarray`` accepts (NumPy arrays, juanji Tensors, lists),
* computes in float64 and returns float64 NumPy arrays (a Python ``tuple`` of them
  for backward functions that return several gradients), so the tests can cast the
  result to the dtype under test.

Layouts (as in the library):
    conv1d  x (N, C, L)     w (K, C/groups, kL)     bias (K,)    y (N, K, Lo)
    conv2d  x (N, C, H, W)  w (K, C/groups, R, S)   bias (K,)    y (N, K, Ho, Wo)
    pool1d  x (N, C, L)      pool2d  x (N, C, H, W)
    linear  x (N, in)       w (out, in)             b (out,)     y (N, out)

Conventions fixed by the seeds:
    * true convolution flips the kernel: (f * g)[t] = sum_u f[u] g[t - u];
    * CNN "convolution" is cross-correlation (no flip):
          y[n, k, o] = b[k] + sum_{c, r} w[k, c, r] * xpad[n, c, o*s + r*d];
    * output size  floor((n + p_before + p_after - d*(f-1) - 1) / s) + 1;
    * conv backward: grad_input = full convolution of the (stride-dilated) error with
      the 180-degree rotated kernel; grad_weight = correlation of input with error;
      grad_bias = sum of the error;
    * max-pool backward routes the gradient to the winning position (the first maximum
      in row-major window order); average pooling spreads it evenly;
    * squared error E = 1/2 sum (z - y)^2.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = [
    # signal
    "convolve",
    "correlate",
    "convolve2d",
    "correlate2d",
    "box_kernel",
    "gaussian_kernel",
    "laplacian_kernel",
    "sobel_x_kernel",
    "sobel_y_kernel",
    # conv
    "conv_output_size",
    "same_padding",
    "resolve_conv_padding",
    "conv1d",
    "conv2d",
    "conv1d_backward",
    "conv2d_backward",
    # pooling
    "pool_output_size",
    "max_pool1d",
    "max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "global_avg_pool2d",
    "max_pool1d_backward",
    "max_pool2d_backward",
    "avg_pool1d_backward",
    "avg_pool2d_backward",
    "global_avg_pool2d_backward",
    # dense
    "linear",
    "linear_backward",
    "relu",
    "relu_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "tanh",
    "tanh_backward",
    "softmax",
    "softmax_backward",
    "log_softmax",
    "log_softmax_backward",
    # losses
    "mse_loss",
    "mse_loss_backward",
    "cross_entropy",
    "cross_entropy_backward",
]


def _f64(a) -> np.ndarray:
    return np.array(a, dtype=np.float64, copy=True)


def _tuple(v, n: int, name: str) -> tuple[int, ...]:
    """int or length-n sequence -> n-tuple of ints."""
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(e) for e in v)
    if len(v) != n:
        raise ValueError(f"{name} must be an int or a {n}-tuple, got {v}")
    return v


# ---------------------------------------------------------------------------------
# Signal convolution (seed 000/002/003): numpy.convolve / numpy.correlate and
# scipy.signal.convolve2d / correlate2d semantics, zero fill.
# ---------------------------------------------------------------------------------

def _full_convolve_1d(f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """y[t] = sum_u f[u] g[t - u], t = 0 .. len(f) + len(g) - 2 (kernel flipped)."""
    out = np.zeros(f.size + g.size - 1)
    for u in range(f.size):  # f[u] times g shifted right by u
        out[u:u + g.size] += f[u] * g
    return out


def _full_correlate_1d(f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """numpy.correlate 'full': c[k] = sum_n f[n + k - (len(g)-1)] g[n] (no flip)."""
    return _full_convolve_1d(f, g[::-1])


def _check_mode(mode: str) -> None:
    if mode not in ("full", "same", "valid"):
        raise ValueError(f"mode must be 'full', 'same' or 'valid', got {mode!r}")


def convolve(f, g, mode: str = "full") -> np.ndarray:
    """True 1-D convolution, exactly ``numpy.convolve(f, g, mode)``.

    full : length N+M-1.
    same : length max(N, M), centred: full[(m-1)//2 : (m-1)//2 + max(N, M)],
           m = min(N, M)  (convolution is commutative, the shorter one is the kernel).
    valid: full overlap only: full[m-1 : max(N, M)].
    """
    _check_mode(mode)
    f = _f64(f).ravel()
    g = _f64(g).ravel()
    if f.size == 0 or g.size == 0:
        raise ValueError("convolve: f and g must be non-empty")
    full = _full_convolve_1d(f, g)
    big, m = max(f.size, g.size), min(f.size, g.size)
    if mode == "full":
        return full
    if mode == "same":
        start = (m - 1) // 2
        return full[start:start + big].copy()
    return full[m - 1:big].copy()


def correlate(f, g, mode: str = "valid") -> np.ndarray:
    """1-D cross-correlation, exactly ``numpy.correlate(f, g, mode)`` (real data).

    full index k holds lag k - (M-1): c[k] = sum_n f[n + k - (M-1)] g[n].
    valid: full overlap, full[m-1 : max(N, M)].
    same : numpy swaps the arguments when g is the longer one and reverses the result,
           so the window into 'full' starts at (M-1)//2 when N >= M but at N//2 when
           N < M (they differ only for even lengths).
    """
    _check_mode(mode)
    f = _f64(f).ravel()
    g = _f64(g).ravel()
    if f.size == 0 or g.size == 0:
        raise ValueError("correlate: f and g must be non-empty")
    n, mm = f.size, g.size
    full = _full_correlate_1d(f, g)
    big, m = max(n, mm), min(n, mm)
    if mode == "full":
        return full
    if mode == "valid":
        return full[m - 1:big].copy()
    start = (mm - 1) // 2 if n >= mm else n // 2
    return full[start:start + big].copy()


def _full_convolve_2d(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """C[x, y] = sum_{t,u} a[t, u] k[x - t, y - u]  (seed 000, discrete 2-D formula)."""
    h, w = a.shape
    out = np.zeros((a.shape[0] + k.shape[0] - 1, a.shape[1] + k.shape[1] - 1))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out[i:i + h, j:j + w] += k[i, j] * a
    return out


def _crop2d(full, a_shape, k_shape, mode, same_start):
    if mode == "full":
        return full
    if mode == "same":  # output has the shape of the first argument
        (r0, c0) = same_start
        return full[r0:r0 + a_shape[0], c0:c0 + a_shape[1]].copy()
    # valid: one input must be at least as large as the other in every dimension
    ge = all(p >= q for p, q in zip(a_shape, k_shape))
    le = all(p <= q for p, q in zip(a_shape, k_shape))
    if not (ge or le):
        raise ValueError(
            f"for 'valid' mode one input must be at least as large as the other in every "
            f"dimension, got {a_shape} and {k_shape}"
        )
    lo = [min(p, q) - 1 for p, q in zip(a_shape, k_shape)]
    hi = [max(p, q) for p, q in zip(a_shape, k_shape)]
    return full[lo[0]:hi[0], lo[1]:hi[1]].copy()


def _check2d(a, k):
    if a.ndim != 2 or k.ndim != 2:
        raise ValueError(f"convolve2d/correlate2d need 2-D inputs, got {a.shape} and {k.shape}")
    if a.size == 0 or k.size == 0:
        raise ValueError(f"convolve2d/correlate2d need non-empty inputs, got {a.shape} and {k.shape}")


def convolve2d(a, k, mode: str = "full") -> np.ndarray:
    """True 2-D convolution (kernel flipped), exactly ``scipy.signal.convolve2d``
    with zero fill.  'same' has the shape of ``a`` and takes
    full[(R-1)//2 :, (S-1)//2 :]; 'valid' is the fully-overlapping part."""
    _check_mode(mode)
    a, k = _f64(a), _f64(k)
    _check2d(a, k)
    full = _full_convolve_2d(a, k)
    R, S = k.shape
    return _crop2d(full, a.shape, k.shape, mode, ((R - 1) // 2, (S - 1) // 2))


def correlate2d(a, k, mode: str = "full") -> np.ndarray:
    """2-D cross-correlation (no flip), exactly ``scipy.signal.correlate2d``, zero fill.

    full[i, j] = sum_{t,u} a[t + i - (R-1), u + j - (S-1)] k[t, u]  (lag (i-R+1, j-S+1));
    'same' has the shape of ``a`` and takes full[R//2 :, S//2 :] (scipy's centring,
    which differs from convolve2d's by one for even kernel sizes)."""
    _check_mode(mode)
    a, k = _f64(a), _f64(k)
    _check2d(a, k)
    full = _full_convolve_2d(a, k[::-1, ::-1])
    R, S = k.shape
    return _crop2d(full, a.shape, k.shape, mode, (R // 2, S // 2))


def box_kernel(n: int) -> np.ndarray:
    """n x n box blur, every entry 1/n^2."""
    return np.full((n, n), 1.0 / (n * n))


def gaussian_kernel(n: int, sigma: float) -> np.ndarray:
    """n x n sampled Gaussian centred at ((n-1)/2, (n-1)/2), normalised to sum 1:
    g[i, j] ~ exp(-((i - c)^2 + (j - c)^2) / (2 sigma^2))."""
    c = (n - 1) / 2.0
    t = np.arange(n) - c
    g1 = np.exp(-(t * t) / (2.0 * sigma * sigma))
    g = np.outer(g1, g1)
    return g / g.sum()


def laplacian_kernel() -> np.ndarray:
    return np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def sobel_x_kernel() -> np.ndarray:
    return np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_y_kernel() -> np.ndarray:
    return sobel_x_kernel().T.copy()


# ---------------------------------------------------------------------------------
# CNN convolution (cross-correlation, seed 000 "g first, f after"; sizes seed 001).
# Written once for any number of spatial dimensions; conv1d / conv2d are thin wrappers.
# ---------------------------------------------------------------------------------

def conv_output_size(n: int, f: int, stride: int = 1, pad_before: int = 0,
                     pad_after: int | None = None, dilation: int = 1) -> int:
    """floor((n + p_before + p_after - d(f-1) - 1) / s) + 1   (seed 001)."""
    if pad_after is None:
        pad_after = pad_before
    return (n + pad_before + pad_after - dilation * (f - 1) - 1) // stride + 1


def same_padding(n: int, f: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'SAME': out = ceil(n / s); total = max((out-1)s + d(f-1) + 1 - n, 0);
    before = total // 2, after = total - before (the extra one goes after)."""
    out = -(-n // stride)
    total = max((out - 1) * stride + dilation * (f - 1) + 1 - n, 0)
    return total // 2, total - total // 2


def resolve_conv_padding(padding, spatial, kernel, stride, dilation):
    """-> list of (before, after) per spatial dim for int / tuple / 'valid' / 'same'."""
    nd = len(spatial)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        if padding == "same":
            return [same_padding(n, f, s, d) for n, f, s, d in zip(spatial, kernel, stride, dilation)]
        raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    p = _tuple(padding, nd, "padding")
    return [(q, q) for q in p]


def _conv_setup(x, w, stride, padding, dilation, groups, nd):
    x, w = _f64(x), _f64(w)
    if x.ndim != nd + 2 or w.ndim != nd + 2:
        raise ValueError(f"x must be {nd + 2}-D and w {nd + 2}-D, got {x.shape} and {w.shape}")
    stride = _tuple(stride, nd, "stride")
    dilation = _tuple(dilation, nd, "dilation")
    C, K = x.shape[1], w.shape[0]
    if groups < 1 or C % groups or K % groups or w.shape[1] * groups != C:
        raise ValueError(f"groups={groups} incompatible with x {x.shape} and w {w.shape}")
    pads = resolve_conv_padding(padding, x.shape[2:], w.shape[2:], stride, dilation)
    return x, w, stride, dilation, pads


def _pad(x, pads, value=0.0):
    return np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads], constant_values=value)


def _conv_forward_nd(xp, w, stride, dilation, groups):
    """Cross-correlation of an already padded input.

    y[n, g*Kg + k, o...] = sum_{c, r...} w[g*Kg + k, c, r...] xp[n, g*Cg + c, o*s + r*d ...]
    Implemented as one einsum per kernel tap (r...): the strided slice
    xp[..., r*d : r*d + s*(O-1) + 1 : s] is the input seen by tap r at every output o.
    """
    N, C = xp.shape[:2]
    K = w.shape[0]
    ksize = w.shape[2:]
    G = groups
    Cg, Kg = C // G, K // G
    out_sp = tuple(
        (n - d * (f - 1) - 1) // s + 1 for n, f, s, d in zip(xp.shape[2:], ksize, stride, dilation)
    )
    if min(out_sp) < 1:
        raise ValueError(f"kernel {ksize} (dilation {dilation}) larger than padded input {xp.shape[2:]}")
    xg = xp.reshape((N, G, Cg) + xp.shape[2:])
    wg = w.reshape((G, Kg, Cg) + ksize)
    y = np.zeros((N, G, Kg) + out_sp)
    for taps in itertools.product(*(range(f) for f in ksize)):
        sl = tuple(
            slice(r * d, r * d + s * (o - 1) + 1, s)
            for r, d, s, o in zip(taps, dilation, stride, out_sp)
        )
        patch = xg[(slice(None),) * 3 + sl]              # (N, G, Cg, O...)
        wt = wg[(slice(None),) * 3 + tuple(taps)]         # (G, Kg, Cg)
        y += np.einsum("ngc...,gkc->ngk...", patch, wt)
    return y.reshape((N, K) + out_sp)


def _conv_nd(x, w, bias, stride, padding, dilation, groups, nd):
    x, w, stride, dilation, pads = _conv_setup(x, w, stride, padding, dilation, groups, nd)
    y = _conv_forward_nd(_pad(x, pads), w, stride, dilation, groups)
    if bias is not None:
        y += _f64(bias).reshape((1, -1) + (1,) * nd)
    return y


def conv1d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """x (N, C, L), w (K, C/groups, kL), bias (K,) -> (N, K, Lo)."""
    return _conv_nd(x, w, bias, stride, padding, dilation, groups, 1)


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """x (N, C, H, W), w (K, C/groups, R, S), bias (K,) -> (N, K, Ho, Wo)."""
    return _conv_nd(x, w, bias, stride, padding, dilation, groups, 2)


def _conv_backward_nd(grad_out, x, w, stride, padding, dilation, groups, nd):
    x, w, stride, dilation, pads = _conv_setup(x, w, stride, padding, dilation, groups, nd)
    gy = _f64(grad_out)
    N, C = x.shape[:2]
    K = w.shape[0]
    ksize = w.shape[2:]
    G = groups
    Cg, Kg = C // G, K // G
    xp = _pad(x, pads)
    out_sp = tuple(
        (n - d * (f - 1) - 1) // s + 1 for n, f, s, d in zip(xp.shape[2:], ksize, stride, dilation)
    )
    if gy.shape != (N, K) + out_sp:
        raise ValueError(f"grad_out must have shape {(N, K) + out_sp}, got {gy.shape}")

    # grad_bias: the error summed over the batch and every output position.
    gb = gy.sum(axis=(0,) + tuple(range(2, 2 + nd)))

    # grad_input (seeds: "full convolution of the error with the 180-degree rotated
    # filter"), done literally:
    #  1. dilate the error by the stride (s-1 zeros between neighbours), so it lives on
    #     the stride-1 grid of the padded input;
    gd = np.zeros((N, K) + tuple((o - 1) * s + 1 for o, s in zip(out_sp, stride)))
    gd[(slice(None),) * 2 + tuple(slice(None, None, s) for s in stride)] = gy
    #  2. zero-pad it by the dilated kernel extent d(f-1) on both sides ("full");
    ext = [d * (f - 1) for f, d in zip(ksize, dilation)]
    gdp = _pad(gd, [(e, e) for e in ext])
    #  3. correlate with the kernel rotated by 180 degrees, with input and output
    #     channels swapped inside each group: w (G, Kg, Cg, r...) -> (G, Cg, Kg, r...)
    #     flipped along every spatial axis -> a grouped conv from K to C channels;
    wr = w.reshape((G, Kg, Cg) + ksize).swapaxes(1, 2)
    wr = wr[(slice(None),) * 3 + (slice(None, None, -1),) * nd]
    wr = np.ascontiguousarray(wr).reshape((C, Kg) + ksize)
    gxp_core = _conv_forward_nd(gdp, wr, (1,) * nd, dilation, G)
    #  4. input positions past the last window (floor in the output size) got no
    #     gradient: pad with zeros to the padded-input size, then drop the padding.
    gxp = np.zeros(xp.shape)
    gxp[(slice(None),) * 2 + tuple(slice(0, m) for m in gxp_core.shape[2:])] = gxp_core
    gx = gxp[(slice(None),) * 2 + tuple(slice(b, b + n) for (b, _), n in zip(pads, x.shape[2:]))]

    # grad_weight[k, c, r] = sum_{n, o} gy[n, k, o] * xp[n, g*Cg + c, o*s + r*d]
    # (the input correlated with the error, one kernel tap at a time).
    xg = xp.reshape((N, G, Cg) + xp.shape[2:])
    gyg = gy.reshape(N, G, Kg, -1)
    gw = np.zeros((G, Kg, Cg) + ksize)
    for taps in itertools.product(*(range(f) for f in ksize)):
        sl = tuple(
            slice(r * d, r * d + s * (o - 1) + 1, s)
            for r, d, s, o in zip(taps, dilation, stride, out_sp)
        )
        patch = xg[(slice(None),) * 3 + sl].reshape(N, G, Cg, -1)  # (N, G, Cg, prod O)
        gw[(slice(None),) * 3 + tuple(taps)] = np.einsum("ngcp,ngkp->gkc", patch, gyg)
    return np.ascontiguousarray(gx), gw.reshape(w.shape), gb


def conv1d_backward(grad_out, x, w, stride=1, padding=0, dilation=1, groups=1):
    """-> (grad_x (N, C, L), grad_w (K, C/groups, kL), grad_b (K,))."""
    return _conv_backward_nd(grad_out, x, w, stride, padding, dilation, groups, 1)


def conv2d_backward(grad_out, x, w, stride=1, padding=0, dilation=1, groups=1):
    """-> (grad_x (N, C, H, W), grad_w (K, C/groups, R, S), grad_b (K,))."""
    return _conv_backward_nd(grad_out, x, w, stride, padding, dilation, groups, 2)


# ---------------------------------------------------------------------------------
# Pooling (seed 000/001/002), PyTorch semantics for padding / ceil_mode / divisor.
# ---------------------------------------------------------------------------------

def pool_output_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """floor-or-ceil((n + 2p - k) / s) + 1; with ceil_mode a last window that would
    start inside the right padding (start >= n + p in padded coordinates) is dropped."""
    num = n + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _pool_setup(x, kernel_size, stride, padding, ceil_mode, nd):
    x = _f64(x)
    if x.ndim != nd + 2:
        raise ValueError(f"x must be {nd + 2}-D, got {x.shape}")
    k = _tuple(kernel_size, nd, "kernel_size")
    s = k if stride is None else _tuple(stride, nd, "stride")
    p = _tuple(padding, nd, "padding")
    if min(k) < 1 or min(s) < 1 or min(p) < 0:
        raise ValueError(f"bad kernel_size {k} / stride {s} / padding {p}")
    if any(2 * pi > ki for pi, ki in zip(p, k)):
        raise ValueError(f"padding {p} must be at most half of kernel_size {k}")
    out = tuple(pool_output_size(n, ki, si, pi, ceil_mode) for n, ki, si, pi in zip(x.shape[2:], k, s, p))
    if min(out) < 1:
        raise ValueError(f"kernel_size {k} too large for input {x.shape} with padding {p}")
    return x, k, s, p, out


def _windows(xp, k, s, out):
    """(N, C, O..., k...) view of every pooling window of the padded input."""
    nd = len(k)
    v = np.lib.stride_tricks.sliding_window_view(xp, k, axis=tuple(range(2, 2 + nd)))
    return v[(slice(None),) * 2 + tuple(slice(0, (o - 1) * si + 1, si) for o, si in zip(out, s))]


def _padded_for_pool(x, k, s, p, out, value):
    """Pad p before and enough after that every window (incl. ceil_mode's overhang
    past the padded input) fits; the overhang gets the same neutral value."""
    pads = [(pi, max((o - 1) * si + ki - n - pi, pi)) for n, ki, si, pi, o in zip(x.shape[2:], k, s, p, out)]
    return _pad(x, pads, value), pads


def _max_pool(x, kernel_size, stride, padding, ceil_mode, nd):
    x, k, s, p, out = _pool_setup(x, kernel_size, stride, padding, ceil_mode, nd)
    xp, _ = _padded_for_pool(x, k, s, p, out, -np.inf)
    win = _windows(xp, k, s, out).reshape(x.shape[:2] + out + (-1,))
    # max over the window; a NaN anywhere in the window makes the output NaN
    m = win.max(axis=-1)
    return m


def _max_pool_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, nd):
    x, k, s, p, out = _pool_setup(x, kernel_size, stride, padding, ceil_mode, nd)
    gy = _f64(grad_out)
    if gy.shape != x.shape[:2] + out:
        raise ValueError(f"grad_out must have shape {x.shape[:2] + out}, got {gy.shape}")
    xp, pads = _padded_for_pool(x, k, s, p, out, -np.inf)
    win = _windows(xp, k, s, out).reshape(x.shape[:2] + out + (-1,))
    # the winner: first maximum in row-major order inside the window (np.argmax
    # returns the first occurrence, like PyTorch's strict '>' scan)
    arg = np.argmax(win, axis=-1)
    tap = np.unravel_index(arg, k)                       # per-dim offset inside window
    grid = np.meshgrid(*(np.arange(o) * si for o, si in zip(out, s)), indexing="ij")
    N, C = x.shape[:2]
    nn, cc = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    idx = [nn.reshape((N, C) + (1,) * nd), cc.reshape((N, C) + (1,) * nd)]
    idx += [g[None, None] + t for g, t in zip(grid, tap)]
    gxp = np.zeros(xp.shape)
    np.add.at(gxp, tuple(np.broadcast_arrays(*idx)), gy)  # routes each error to its winner
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pads, x.shape[2:]))
    return np.ascontiguousarray(gxp[(slice(None),) * 2 + crop])


def _avg_divisor(n, k, s, p, out, count_include_pad):
    """Per-output divisor along one dim (PyTorch): the window [start, start+k) in
    unpadded coordinates, start = o*s - p, is clipped to the padded input [-p, n+p)
    (so ceil_mode's overhang never counts); without count_include_pad it is clipped
    to the real input [0, n)."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, n + p)
    if count_include_pad:
        return end - start
    return np.minimum(end, n) - np.maximum(start, 0)


def _avg_divisors(x_spatial, k, s, p, out, count_include_pad):
    per_dim = [_avg_divisor(n, ki, si, pi, o, count_include_pad)
               for n, ki, si, pi, o in zip(x_spatial, k, s, p, out)]
    div = per_dim[0].astype(np.float64)
    for d in per_dim[1:]:
        div = np.multiply.outer(div, d)
    return div


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, nd):
    x, k, s, p, out = _pool_setup(x, kernel_size, stride, padding, ceil_mode, nd)
    xp, _ = _padded_for_pool(x, k, s, p, out, 0.0)
    win = _windows(xp, k, s, out).reshape(x.shape[:2] + out + (-1,))
    return win.sum(axis=-1) / _avg_divisors(x.shape[2:], k, s, p, out, count_include_pad)


def _avg_pool_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, count_include_pad, nd):
    x, k, s, p, out = _pool_setup(x, kernel_size, stride, padding, ceil_mode, nd)
    gy = _f64(grad_out)
    if gy.shape != x.shape[:2] + out:
        raise ValueError(f"grad_out must have shape {x.shape[:2] + out}, got {gy.shape}")
    share = gy / _avg_divisors(x.shape[2:], k, s, p, out, count_include_pad)
    xp, pads = _padded_for_pool(x, k, s, p, out, 0.0)
    gxp = np.zeros(xp.shape)
    # spread every output's error evenly over its window (padding soaks up its share)
    for taps in itertools.product(*(range(ki) for ki in k)):
        sl = tuple(slice(t, t + (o - 1) * si + 1, si) for t, o, si in zip(taps, out, s))
        gxp[(slice(None),) * 2 + sl] += share
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pads, x.shape[2:]))
    return np.ascontiguousarray(gxp[(slice(None),) * 2 + crop])


def max_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    return _max_pool(x, kernel_size, stride, padding, ceil_mode, 1)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    return _max_pool(x, kernel_size, stride, padding, ceil_mode, 2)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, 1)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, 2)


def max_pool1d_backward(grad_out, x, kernel_size, stride=None, padding=0, ceil_mode=False):
    return _max_pool_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, 1)


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, ceil_mode=False):
    return _max_pool_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, 2)


def avg_pool1d_backward(grad_out, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True):
    return _avg_pool_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, count_include_pad, 1)


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True):
    return _avg_pool_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, count_include_pad, 2)


def global_avg_pool2d(x) -> np.ndarray:
    """(N, C, H, W) -> (N, C, 1, 1), the mean of each channel."""
    x = _f64(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D, got {x.shape}")
    return x.mean(axis=(2, 3), keepdims=True)


def global_avg_pool2d_backward(grad_out, x) -> np.ndarray:
    x = _f64(x)
    gy = _f64(grad_out).reshape(x.shape[0], x.shape[1], 1, 1)
    return np.broadcast_to(gy / (x.shape[2] * x.shape[3]), x.shape).copy()


# ---------------------------------------------------------------------------------
# Dense part: linear ("BP network"), activations, losses.
# ---------------------------------------------------------------------------------

def linear(x, w, b=None) -> np.ndarray:
    """x (N, in), w (out, in), b (out,) -> y = x w^T + b  (N, out)."""
    x, w = _f64(x), _f64(w)
    y = x @ w.T
    if b is not None:
        y += _f64(b)
    return y


def linear_backward(grad_out, x, w):
    """-> (grad_x = g w, grad_w = g^T x, grad_b = sum_n g)."""
    g, x, w = _f64(grad_out), _f64(x), _f64(w)
    return g @ w, g.T @ x, g.sum(axis=0)


def relu(x) -> np.ndarray:
    x = _f64(x)
    return np.where(x > 0, x, 0.0)


def relu_backward(grad_out, x) -> np.ndarray:
    """relu'(x) = 1 for x > 0, else 0 (so relu'(0) = 0)."""
    return np.where(_f64(x) > 0, _f64(grad_out), 0.0)


def leaky_relu(x, negative_slope=0.01) -> np.ndarray:
    x = _f64(x)
    return np.where(x > 0, x, negative_slope * x)


def leaky_relu_backward(grad_out, x, negative_slope=0.01) -> np.ndarray:
    g = _f64(grad_out)
    return np.where(_f64(x) > 0, g, negative_slope * g)


def sigmoid(x) -> np.ndarray:
    """1 / (1 + e^-x), evaluated without overflow for either sign."""
    x = _f64(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_backward(grad_out, x) -> np.ndarray:
    s = sigmoid(x)
    return _f64(grad_out) * s * (1.0 - s)


def tanh(x) -> np.ndarray:
    return np.tanh(_f64(x))


def tanh_backward(grad_out, x) -> np.ndarray:
    t = np.tanh(_f64(x))
    return _f64(grad_out) * (1.0 - t * t)


def log_softmax(x, dim=-1) -> np.ndarray:
    """x - logsumexp(x), with the max subtracted first (stable for |x| ~ 1000)."""
    x = _f64(x)
    z = x - x.max(axis=dim, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=dim, keepdims=True))


def softmax(x, dim=-1) -> np.ndarray:
    return np.exp(log_softmax(x, dim))


def softmax_backward(grad_out, x, dim=-1) -> np.ndarray:
    """dL/dx = s * (g - sum(g * s))  along dim."""
    s, g = softmax(x, dim), _f64(grad_out)
    return s * (g - (g * s).sum(axis=dim, keepdims=True))


def log_softmax_backward(grad_out, x, dim=-1) -> np.ndarray:
    """dL/dx = g - softmax(x) * sum(g)  along dim."""
    g = _f64(grad_out)
    return g - softmax(x, dim) * g.sum(axis=dim, keepdims=True)


_MSE_REDUCTIONS = ("mean", "sum", "half_sum", "none")
_CE_REDUCTIONS = ("mean", "sum", "none")


def mse_loss(z, y, reduction="mean") -> np.ndarray:
    """Squared error.  'half_sum' is the seeds' E = 1/2 sum (z - y)^2; 'sum' drops the
    1/2; 'mean' is sum / numel; 'none' is the elementwise (z - y)^2."""
    z, y = _f64(z), _f64(y)
    if z.shape != y.shape:
        raise ValueError(f"z and y must have the same shape, got {z.shape} and {y.shape}")
    if reduction not in _MSE_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}")
    d2 = (z - y) ** 2
    if reduction == "none":
        return d2
    if reduction == "sum":
        return np.array(d2.sum())
    if reduction == "half_sum":
        return np.array(0.5 * d2.sum())
    return np.array(d2.mean())


def mse_loss_backward(z, y, reduction="mean") -> np.ndarray:
    """dE/dz: 'half_sum' -> z - y (the seeds' delta), 'sum' -> 2(z - y),
    'mean' -> 2(z - y)/numel, 'none' -> 2(z - y) (grad_out = 1 everywhere)."""
    z, y = _f64(z), _f64(y)
    if z.shape != y.shape:
        raise ValueError(f"z and y must have the same shape, got {z.shape} and {y.shape}")
    if reduction not in _MSE_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}")
    d = z - y
    if reduction == "half_sum":
        return d
    if reduction == "mean":
        return 2.0 * d / d.size
    return 2.0 * d


def _ce_setup(logits, labels, reduction):
    x = _f64(logits)
    lab = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"logits must be (N, C), got {x.shape}")
    if lab.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {lab.shape}")
    lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= x.shape[1]):
        raise ValueError(f"labels must lie in [0, {x.shape[1]})")
    if reduction not in _CE_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}")
    return x, lab


def _ce_target(x, lab, label_smoothing):
    """PyTorch's smoothed target distribution q = (1 - eps) * onehot(y) + eps / C."""
    q = np.full(x.shape, label_smoothing / x.shape[1])
    q[np.arange(x.shape[0]), lab] += 1.0 - label_smoothing
    return q


def cross_entropy(logits, labels, reduction="mean", label_smoothing=0.0) -> np.ndarray:
    """Softmax cross-entropy on integer labels: l_n = -sum_c q_nc log_softmax(x_n)_c with the
    target q of _ce_target; for eps = 0, logsumexp(x_n) - x_n[y_n], computed stably (max
    subtracted)."""
    x, lab = _ce_setup(logits, labels, reduction)
    l = -np.sum(_ce_target(x, lab, label_smoothing) * log_softmax(x, dim=1), axis=1)
    if reduction == "none":
        return l
    if reduction == "sum":
        return np.array(l.sum())
    return np.array(l.mean())


def cross_entropy_backward(logits, labels, reduction="mean", label_smoothing=0.0) -> np.ndarray:
    """d loss / d logits = softmax(x) - q  (q = onehot(y) for eps = 0; divided by N for 'mean';
    for 'none' the per-sample losses are each given grad_out = 1)."""
    x, lab = _ce_setup(logits, labels, reduction)
    g = softmax(x, dim=1) - _ce_target(x, lab, label_smoothing)
    if reduction == "mean":
        g /= x.shape[0]
    return g
