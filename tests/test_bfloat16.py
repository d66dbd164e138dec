"""bfloat16 tensors: conversions from float32 (against ml_dtypes) and float64 (against an exact
rational reference) with round to nearest even, special values, the way back (exact), NumPy
interop through ml_dtypes, DLPack with torch.bfloat16, BF16 checkpoints, random numbers, and the
errors of ops that do not take bfloat16."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import juanji
from juanji import nn, optim

ml_dtypes = pytest.importorskip("ml_dtypes")
bf16 = np.dtype(ml_dtypes.bfloat16)


def bits16(t) -> np.ndarray:
    """The bfloat16 bit patterns of a juanji tensor, as uint16."""
    a = np.asarray(t)
    assert a.dtype == bf16
    return a.view(np.uint16)


def f32_from_bits(bits) -> np.ndarray:
    return np.asarray(bits, np.uint32).view(np.float32)


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """juanji's conversion of a float32/float64 array to bfloat16, as bits."""
    return bits16(juanji.from_numpy(values).to("bfloat16"))


def assert_nan_conversion(src_bits32: np.ndarray, got16: np.ndarray):
    """float32 NaNs become quiet bfloat16 NaNs with the same sign."""
    assert np.all((got16 & 0x7F80) == 0x7F80) and np.all((got16 & 0x007F) != 0), "not NaN"
    assert np.all(got16 & 0x0040), "not quiet"
    np.testing.assert_array_equal(got16 >> 15, (src_bits32 >> 31).astype(np.uint16), "sign lost")


def check_float32_against_ml_dtypes(src_bits32: np.ndarray):
    src_bits32 = np.asarray(src_bits32, np.uint32)
    values = f32_from_bits(src_bits32)
    got = to_bf16_bits(values)
    nan = np.isnan(values)
    expected = values[~nan].astype(bf16).view(np.uint16)
    bad = np.flatnonzero(got[~nan] != expected)
    assert bad.size == 0, [(f"{src_bits32[~nan][i]:08x}", f"{got[~nan][i]:04x}", f"{expected[i]:04x}")
                           for i in bad[:5]]
    assert_nan_conversion(src_bits32[nan], got[nan])


# ---------------------------------------------------------------------------------
# float32 -> bfloat16
# ---------------------------------------------------------------------------------

def test_float32_random_bit_patterns_match_ml_dtypes():
    rng = np.random.default_rng(23)
    check_float32_against_ml_dtypes(rng.integers(0, 2**32, size=1 << 22, dtype=np.uint64))


def test_float32_every_upper_half_with_the_rounding_cases_matches_ml_dtypes():
    # Every sign, exponent and bfloat16 mantissa (so every class: zeros, bfloat16 and float32
    # subnormals, normals, the largest finite, infinities, NaNs), each with the dropped half
    # exact, 1 ulp above zero, 1 ulp below the tie, at the tie and 1 ulp above it, and largest.
    upper = np.arange(1 << 16, dtype=np.uint32) << 16
    lower = np.array([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    check_float32_against_ml_dtypes((upper[:, None] | lower[None, :]).ravel())


@pytest.mark.parametrize("src, expected", [
    (0x00000000, 0x0000), (0x80000000, 0x8000),          # +-0
    (0x7F800000, 0x7F80), (0xFF800000, 0xFF80),          # +-inf
    (0x00000001, 0x0000), (0x80000001, 0x8000),          # smallest float32 subnormals
    (0x007FFFFF, 0x0080), (0x00400000, 0x0040),          # float32 subnormals -> bfloat16's
    (0x00010000, 0x0001), (0x00018000, 0x0002),          # smallest bfloat16 subnormal; a tie up
    (0x00008000, 0x0000), (0x00008001, 0x0001),          # half the smallest: tie to 0; above it
    (0x7F7F0000, 0x7F7F), (0x7F7F7FFF, 0x7F7F),          # largest finite bfloat16; just below
    (0x7F7F8000, 0x7F80), (0x7F7FFFFF, 0x7F80),          # its tie with 2^128 and above: inf
    (0xFF7F8000, 0xFF80),
    (0x3F808000, 0x3F80), (0x3F818000, 0x3F82),          # ties: even stays, odd goes up
    (0x3F807FFF, 0x3F80), (0x3F808001, 0x3F81),          # 1 ulp either side of a tie
    (0x3F817FFF, 0x3F81), (0x3F818001, 0x3F82),
    (0xBF818000, 0xBF82),                                # negative ties round the magnitude
], ids=lambda v: f"{v:08x}")
def test_float32_special_cases(src, expected):
    assert to_bf16_bits(f32_from_bits([src]))[0] == expected


@pytest.mark.parametrize("src", [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FA00000, 0x7F80FFFF,
                                 0x7FFFFFFF], ids=lambda v: f"{v:08x}")
def test_float32_nan_stays_a_quiet_nan_with_its_sign(src):
    # 0x7F800001 and 0x7F80FFFF are signalling NaNs whose payload lies in the dropped half alone:
    # truncated, they would become infinity.
    assert_nan_conversion(np.array([src], np.uint32), to_bf16_bits(f32_from_bits([src])))


# ---------------------------------------------------------------------------------
# float64 -> bfloat16, rounded once
# ---------------------------------------------------------------------------------

def bf16_nearest(x: float) -> float:
    """x rounded to bfloat16 (8 significant bits, exponents down to -133), ties to even, exactly."""
    if math.isnan(x) or math.isinf(x) or x == 0:
        return x
    exponent = max(math.frexp(abs(x))[1] - 1, -126)
    ulp = Fraction(2) ** (exponent - 7)
    rounded = round(Fraction(x) / ulp) * ulp  # Fraction's round() takes ties to even
    if abs(rounded) >= 2**128:
        return math.copysign(math.inf, x)
    return math.copysign(float(rounded), x)


def double_rounding_cases() -> list[float]:
    """float64 values within a float32 half-ulp of a bfloat16 tie, on either side: float32
    rounding lands on the tie, so float64 -> float32 -> bfloat16 rounds half of them the wrong
    way (those with an even kept part above the tie, and an odd one below)."""
    rng = np.random.default_rng(64)
    cases = []
    # bfloat16 subnormals (spacing 2^-133), then normals of exponent e (spacing 2^(e-7)).
    grids = [(-133, 0)] + [(e - 7, 128) for e in [-126, -125, -60, -1, 0, 1, 30, 126, 127]]
    for ulp_exponent, first_mantissa in grids:
        ulp = Fraction(2) ** ulp_exponent
        for _ in range(60):
            tie = (int(rng.integers(first_mantissa, 256)) + Fraction(1, 2)) * ulp
            # Above float64's resolution at the tie (2^-44 ulp), below float32's half-ulp (2^-17).
            nudge = int(rng.integers(1, 1 << 26)) * ulp / 2**44
            for value in (tie + nudge, tie - nudge):
                x = float(value)
                assert x != float(tie) and float(np.float32(x)) == float(tie)
                cases.append(x)
    return cases


def test_float64_rounds_once_where_two_roundings_would_differ():
    cases = double_rounding_cases()
    x = np.array(cases + [-c for c in cases], np.float64)
    expected = np.array([bf16_nearest(float(v)) for v in x])
    twice = x.astype(np.float32).astype(bf16).astype(np.float64)
    assert np.count_nonzero(twice != expected) > len(x) // 4, "the cases must tell the roundings apart"
    got = np.asarray(juanji.from_numpy(x).to("bfloat16")).astype(np.float64)
    np.testing.assert_array_equal(got, expected)


def test_float64_random_values_and_specials_match_the_exact_reference():
    rng = np.random.default_rng(7)
    random_bits = rng.integers(0, 2**64, size=20000, dtype=np.uint64).view(np.float64)
    scaled = rng.standard_normal(20000) * np.exp2(rng.integers(-140, 130, size=20000))
    overflow_tie = float(2**128 - 2**119)  # halfway from the largest finite bfloat16 to 2^128
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 5e-324, -5e-324, 1e-45, 2.0**-134, 2.0**-133,
                         1.5 * 2.0**-134, -1.5 * 2.0**-134, float(2**128 - 2**120), overflow_tie,
                         np.nextafter(overflow_tie, 0), np.nextafter(overflow_tie, np.inf),
                         3.4028234663852886e38, 3.5e38, 1e300, -1e300])
    x = np.concatenate([random_bits[np.isfinite(random_bits)], scaled, specials])
    expected = np.array([bf16_nearest(float(v)) for v in x])
    got = np.asarray(juanji.from_numpy(x).to("bfloat16")).astype(np.float64)
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))


def test_float64_nan_stays_nan_with_its_sign():
    x = np.array([np.nan, -np.nan, struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0]])
    got = bits16(juanji.from_numpy(x).to("bfloat16"))
    assert np.all((got & 0x7FC0) == 0x7FC0)
    np.testing.assert_array_equal(got >> 15, np.signbit(x).astype(np.uint16))


def test_fill_and_factories_round_once_from_float64():
    x = 1 + 2.0**-8 + 2.0**-40  # float32 would round it to the tie 1 + 2^-8, then to 1.0
    assert juanji.full((3,), x, dtype="bfloat16").numpy().astype(float).tolist() == [1 + 2.0**-7] * 3
    assert juanji.tensor([x], dtype="bfloat16").item() == 1 + 2.0**-7
    assert juanji.zeros(2, 2, dtype="bfloat16").numpy().astype(float).tolist() == [[0, 0], [0, 0]]
    assert juanji.ones(3, dtype=ml_dtypes.bfloat16).dtype == bf16
    np.testing.assert_array_equal(juanji.arange(0, 3, 0.7, dtype="bfloat16").numpy(),
                                  np.arange(0, 3, 0.7).astype(bf16))


# ---------------------------------------------------------------------------------
# bfloat16 -> float32 / float64, round trips
# ---------------------------------------------------------------------------------

ALL_BF16_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def test_every_bfloat16_widens_exactly():
    t = juanji.from_numpy(ALL_BF16_BITS.view(bf16))
    f32 = np.asarray(t.to("float32"))
    is_nan = np.isnan(f32)
    np.testing.assert_array_equal(f32.view(np.uint32)[~is_nan], ALL_BF16_BITS.astype(np.uint32)[~is_nan] << 16)
    f64 = np.asarray(t.to("float64"))
    np.testing.assert_array_equal(f64[~is_nan], f32[~is_nan].astype(np.float64))
    nan_bits = ALL_BF16_BITS[is_nan]
    assert np.all(np.isnan(f32[is_nan])) and np.all(np.isnan(f64[is_nan]))
    np.testing.assert_array_equal(np.signbit(f64[is_nan]), nan_bits >> 15 == 1)


@pytest.mark.parametrize("wide", ["float32", "float64"])
def test_round_trip_through_a_wider_type_keeps_every_bfloat16(wide):
    t = juanji.from_numpy(ALL_BF16_BITS.view(bf16))
    back = bits16(t.to(wide).to("bfloat16"))
    signalling = ((ALL_BF16_BITS & 0x7F80) == 0x7F80) & ((ALL_BF16_BITS & 0x7F) != 0) & \
                 ((ALL_BF16_BITS & 0x40) == 0)
    np.testing.assert_array_equal(back[~signalling], ALL_BF16_BITS[~signalling])
    # A signalling NaN comes back quiet, with its sign (float64's payload is the hardware's).
    assert np.all((back[signalling] & 0x7FC0) == 0x7FC0)
    np.testing.assert_array_equal(back[signalling] >> 15, ALL_BF16_BITS[signalling] >> 15)


def test_integers_and_item():
    t = juanji.tensor(np.array([3, -7, 257, 1 << 40]), dtype="bfloat16")
    assert t.numpy().astype(float).tolist() == [3, -7, 256, float(1 << 40)]
    np.testing.assert_array_equal(np.asarray(t.to("int64")), [3, -7, 256, 1 << 40])
    assert juanji.full((1,), -2.5, dtype="bfloat16").item() == -2.5


# ---------------------------------------------------------------------------------
# NumPy interop (ml_dtypes)
# ---------------------------------------------------------------------------------

def test_numpy_bfloat16_arrays_are_shared_without_copying():
    a = np.arange(12, dtype=np.float32).astype(bf16).reshape(3, 4)
    t = juanji.from_numpy(a)
    assert t.dtype == bf16 and t.shape == (3, 4)
    assert np.shares_memory(np.asarray(t), a) and np.shares_memory(t.numpy(), a)
    a[1, 2] = 100
    assert np.asarray(t)[1, 2] == 100
    t.fill_(0.5)
    assert a[0, 0] == 0.5


def test_read_only_bfloat16_array_gives_a_read_only_tensor():
    a = np.ones(4, bf16)
    a.flags.writeable = False
    t = juanji.from_numpy(a)
    with pytest.raises(ValueError, match="read-only"):
        t.fill_(2)
    assert not np.asarray(t).flags.writeable


@pytest.mark.parametrize("layout", ["transposed", "strided", "fortran", "negative-step"])
def test_non_contiguous_bfloat16_arrays_are_copied(layout):
    base = (np.arange(48, dtype=np.float32) - 20.25).astype(bf16).reshape(6, 8)
    a = {"transposed": base.T, "strided": base[::2, 1::3], "fortran": np.asfortranarray(base),
         "negative-step": base[::-1]}[layout]
    t = juanji.from_numpy(a)
    np.testing.assert_array_equal(bits16(t), a.view(np.uint16))
    assert t.is_contiguous()


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_non_contiguous_float32_converts(layout):
    base = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    view = {"transposed": lambda a: a.T, "strided": lambda a: a[::2, 1::3]}[layout]
    expected = view(base).astype(bf16).view(np.uint16)
    np.testing.assert_array_equal(to_bf16_bits(view(base)), expected)  # a NumPy view
    as_view = view(juanji.from_numpy(base))
    assert not as_view.is_contiguous()
    np.testing.assert_array_equal(bits16(as_view.to("bfloat16")), expected)  # a juanji view


@pytest.mark.parametrize("spelling", ["bfloat16", ml_dtypes.bfloat16, np.dtype(ml_dtypes.bfloat16)],
                         ids=["str", "type", "dtype"])
def test_dtype_spellings(spelling):
    x = juanji.tensor([1.0, 2.0, 3.0])
    assert x.to(spelling).dtype == bf16
    assert x.astype(spelling).dtype == bf16
    assert juanji.zeros(2, dtype=spelling).dtype == bf16
    assert juanji.rand(2, dtype=spelling).dtype == bf16


def test_to_numpy_forms():
    t = juanji.tensor([1.5, -2.0], dtype="bfloat16")
    assert np.asarray(t).dtype == bf16
    assert np.asarray(t, dtype=np.float32).tolist() == [1.5, -2.0]
    assert np.array(t, copy=True).dtype == bf16
    assert "bfloat16" in repr(t) and "1.5" in repr(t)
    with pytest.raises(BufferError):
        memoryview(t)


def test_tensor_from_bfloat16_array_and_to_other_dtypes():
    a = np.array([0.1, 3.0], np.float64).astype(bf16)
    assert juanji.tensor(a).dtype == bf16
    np.testing.assert_array_equal(np.asarray(juanji.tensor(a, dtype="float32")), a.astype(np.float32))


def test_missing_ml_dtypes_is_named(monkeypatch):
    t = juanji.zeros(2, dtype="bfloat16")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # `import ml_dtypes` now fails
    message = r"bfloat16 tensors need ml_dtypes \(pip install ml_dtypes\)"
    with pytest.raises(ImportError, match=message):
        np.asarray(t)
    with pytest.raises(ImportError, match=message):
        t.numpy()
    assert repr(t) == "Tensor(shape=(2,), dtype=bfloat16, device=cpu)"
    np.testing.assert_array_equal(np.asarray(t.to("float32")), [0, 0])


def test_ml_dtypes_is_not_imported_with_juanji():
    code = ("import sys, juanji\n"
            "t = juanji.tensor([1.25], dtype='bfloat16')\n"
            "assert t.to('float32').item() == 1.25\n"
            "assert 'ml_dtypes' not in sys.modules, 'imported early'\n"
            "import numpy as np\n"
            "assert str(np.asarray(t).dtype) == 'bfloat16' and 'ml_dtypes' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------
# DLPack
# ---------------------------------------------------------------------------------

def test_dlpack_from_torch_bfloat16_is_zero_copy():
    torch = pytest.importorskip("torch")
    x = torch.randn(3, 5, dtype=torch.float32).to(torch.bfloat16)
    t = juanji.from_dlpack(x)
    assert t.dtype == bf16 and t.shape == (3, 5)
    assert np.asarray(t).ctypes.data == x.data_ptr()
    np.testing.assert_array_equal(np.asarray(t.to("float32")), x.float().numpy())
    x[1, 2] = 7.0
    assert np.asarray(t)[1, 2] == 7.0
    sliced = juanji.from_dlpack(x[:, 1::2])
    assert not sliced.is_contiguous()
    np.testing.assert_array_equal(np.asarray(sliced.to("float32")), x[:, 1::2].float().numpy())


def test_dlpack_to_torch_bfloat16_is_zero_copy():
    torch = pytest.importorskip("torch")
    t = juanji.tensor(np.linspace(-3, 3, 12).reshape(3, 4), dtype="bfloat16")
    x = torch.from_dlpack(t)
    assert x.dtype == torch.bfloat16 and tuple(x.shape) == (3, 4)
    assert x.data_ptr() == np.asarray(t).ctypes.data
    np.testing.assert_array_equal(x.float().numpy(), np.asarray(t.to("float32")))
    x[0, 0] = -1.5
    assert np.asarray(t)[0, 0] == -1.5
    np.testing.assert_array_equal(torch.from_dlpack(t.T).float().numpy(), np.asarray(t.to("float32")).T)


def test_conversion_agrees_with_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).standard_normal(100000).astype(np.float32) * 1e3
    expected = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(to_bf16_bits(x), expected)


# ---------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------

def read_header(path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def test_safetensors_round_trip_of_bf16(tmp_path):
    path = tmp_path / "bf16.safetensors"
    array = (np.random.default_rng(2).standard_normal((3, 5)) * 100).astype(bf16)
    tensor = juanji.tensor(np.arange(7.0) / 3, dtype="bfloat16")
    juanji.save_safetensors(path, {"a": array, "t": tensor, "odd": juanji.ones(3, dtype="bfloat16")})
    header = read_header(path)
    assert [header[k]["dtype"] for k in ("a", "t", "odd")] == ["BF16"] * 3
    assert header["odd"]["data_offsets"][1] - header["odd"]["data_offsets"][0] == 6
    tensors, _ = juanji.load_safetensors(path)
    np.testing.assert_array_equal(bits16(tensors["a"]), array.view(np.uint16))
    np.testing.assert_array_equal(bits16(tensors["t"]), bits16(tensor))


def test_safetensors_bf16_interchange_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    x = torch.randn(4, 6).to(torch.bfloat16)
    st_torch.save_file({"x": x}, str(tmp_path / "torch.safetensors"))
    tensors, _ = juanji.load_safetensors(tmp_path / "torch.safetensors")
    np.testing.assert_array_equal(np.asarray(tensors["x"].to("float32")), x.float().numpy())
    juanji.save_safetensors(tmp_path / "juanji.safetensors", {"x": tensors["x"]})
    assert torch.equal(st_torch.load_file(str(tmp_path / "juanji.safetensors"))["x"], x)


def small_model():
    juanji.manual_seed(11)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


@pytest.mark.parametrize("model_dtype", ["float32", "float64"])
def test_model_loads_bf16_weights_exactly(tmp_path, model_dtype):
    weights = {k: v.astype(bf16) for k, v in small_model().state_dict().items()}
    path = tmp_path / "weights.safetensors"
    juanji.save_safetensors(path, weights)
    from_file, _ = juanji.load_safetensors(path)
    x = np.random.default_rng(3).standard_normal((2, 1, 4, 4)).astype(model_dtype)
    outputs = []
    for state in (from_file, weights):  # juanji bfloat16 tensors; ml_dtypes arrays
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
        model.to(model_dtype)
        assert model.load_state_dict(state) == ([], [])
        for name, value in model.state_dict().items():
            assert value.dtype == np.dtype(model_dtype)
            np.testing.assert_array_equal(value, weights[name].astype(model_dtype), err_msg=name)
        outputs.append(np.asarray(model.forward(x)))
    reference = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    reference.to(model_dtype)
    reference.load_state_dict({k: v.astype(model_dtype) for k, v in weights.items()})
    np.testing.assert_array_equal(outputs[0], np.asarray(reference.forward(x)))
    np.testing.assert_array_equal(outputs[1], outputs[0])


def test_bf16_entry_of_the_wrong_size_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = json.dumps({"h": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(ValueError, match="bfloat16"):
        juanji.load_safetensors(path)


# ---------------------------------------------------------------------------------
# Random numbers
# ---------------------------------------------------------------------------------

def test_randn_in_bf16_is_the_float64_draws_rounded_once():
    juanji.manual_seed(5)
    wide = np.asarray(juanji.randn(5000, dtype="float64"))
    juanji.manual_seed(5)
    got = np.asarray(juanji.randn(5000, dtype="bfloat16")).astype(np.float64)
    np.testing.assert_array_equal(got, [bf16_nearest(float(v)) for v in wide])


def test_rand_in_bf16_truncates_the_float32_draws_and_stays_below_one():
    n = 200000  # about 400 float32 draws here lie within a bfloat16 half-ulp of 1
    juanji.manual_seed(9)
    f32 = np.asarray(juanji.rand(n, dtype="float32"))
    juanji.manual_seed(9)
    got = bits16(juanji.rand(n, dtype="bfloat16"))
    np.testing.assert_array_equal(got, (f32.view(np.uint32) >> 16).astype(np.uint16))
    values = got.view(bf16).astype(np.float32)
    assert values.min() >= 0 and values.max() < 1


def test_random_int64_is_refused():
    with pytest.raises(TypeError, match="float32, float64 or bfloat16, got int64"):
        juanji.randn(3, dtype="int64")


# ---------------------------------------------------------------------------------
# Ops that do not take bfloat16 (yet): TypeError naming it, never a crash
# ---------------------------------------------------------------------------------

def b(*shape):
    return juanji.ones(*shape, dtype="bfloat16")


def labels():
    return np.array([0, 1])


# Ops whose bfloat16 kernels arrive leave this list for tests of their results.
REFUSING = {
    "softmax": lambda: juanji.softmax(b(2, 3)),
    "log_softmax": lambda: juanji.log_softmax(b(2, 3)),
    "cross_entropy": lambda: juanji.cross_entropy(b(2, 3), labels()),
    "mse_loss": lambda: juanji.mse_loss(b(2, 3), b(2, 3)),
    "batch_norm_layer": lambda: nn.BatchNorm2d(1).forward(b(2, 1, 3, 3)),
    "linear_layer": lambda: nn.Linear(3, 2).forward(b(2, 3)),
    "convolve": lambda: juanji.convolve(b(5), b(2)),
    "ml_dtypes_array": lambda: juanji.softmax(np.ones((2, 3), bf16)),
    "global_avg_pool2d": lambda: juanji.global_avg_pool2d(b(1, 1, 4, 4)),
}


@pytest.mark.parametrize("op", REFUSING.values(), ids=REFUSING.keys())
def test_ops_refuse_bfloat16_by_name(op):
    with pytest.raises(TypeError, match="bfloat16"):
        op()


MIXES = {
    "conv2d": lambda: juanji.conv2d(juanji.ones(1, 1, 4, 4, dtype="float64"), b(1, 1, 3, 3)),
    "conv2d_bias": lambda: juanji.conv2d(b(1, 1, 4, 4), b(1, 1, 3, 3), juanji.ones(1, dtype="float64")),
    "linear": lambda: juanji.linear(juanji.ones(2, 3, dtype="float64"), b(4, 3)),
    "linear_back": lambda: juanji.linear(b(2, 3), juanji.ones(4, 3, dtype="float64")),
    "mse_loss": lambda: juanji.mse_loss(juanji.ones(2, 3, dtype="float64"), b(2, 3)),
    "float64_layer": lambda: nn.Linear(3, 2).to("float64").forward(b(2, 3)),
    "float64_model_train_step": lambda: train_float64_model_on(b(2, 3)),
}


def train_float64_model_on(x):
    model = nn.Sequential(nn.Linear(3, 2)).to("float64")
    return model.train_step(x, labels(), nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("op", MIXES.values(), ids=MIXES.keys())
def test_float64_with_bfloat16_is_refused(op):
    with pytest.raises(TypeError, match="bfloat16"):
        op()


class HalfParameters(nn.Layer):
    """A layer written in Python whose parameter is bfloat16: the one way a parameter can be."""

    def __init__(self):
        super().__init__()
        self.add_parameter("weight", np.ones((2, 4), bf16))

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


@pytest.mark.parametrize("make", [lambda p: optim.SGD(p, lr=0.1, momentum=0.9), lambda p: optim.Adam(p, lr=0.1),
                                  lambda p: optim.SGD(p, lr=0.1, max_grad_norm=1.0)], ids=["sgd", "adam", "clip"])
def test_optimizer_refuses_bfloat16_parameters(make):
    model = nn.Sequential(HalfParameters())
    opt = make(model.parameters())
    with pytest.raises(TypeError, match=r"params: '0\.weight'.*bfloat16"):
        opt.step()


def test_models_are_not_cast_to_bfloat16_but_compute_in_it_by_precision():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"Sequential\.to: parameters are float32 or float64, got bfloat16; "
                                        r"for bfloat16 compute, set_precision\('bf16'\)"):
        model.to("bfloat16")
    assert model.parameters()[0].data.dtype == np.float32


def test_a_model_checkpoint_with_bfloat16_weights_loads_as_float32(tmp_path):
    small_model().save(tmp_path / "m.safetensors")
    tensors, metadata = juanji.load_safetensors(tmp_path / "m.safetensors")
    halved = {name: np.asarray(t).astype(bf16) for name, t in tensors.items()}
    juanji.save_safetensors(tmp_path / "b.safetensors", halved, metadata)
    loaded = juanji.load(tmp_path / "b.safetensors")
    for name, value in loaded.state_dict().items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, halved[name].astype(np.float32), err_msg=name)


def test_distributed_sums_refuse_bfloat16():
    with pytest.raises(TypeError, match="bfloat16"):
        juanji.distributed.all_reduce(np.ones(3, bf16))


def test_unsupported_dtype_names_what_juanji_holds():
    with pytest.raises(TypeError, match="float32, float64, bfloat16 and int64"):
        juanji.zeros(2, dtype=np.float16)
