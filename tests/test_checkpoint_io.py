"""Checkpoint files in the safetensors layout: round trips, interchange with the
``safetensors`` package and plain NumPy, and one test per way a file can be corrupt (each
must raise ValueError, never crash or return wrong data)."""

from __future__ import annotations

import json
import os
import pathlib
import random
import struct
import sys
import types

import numpy as np
import pytest

import juanji
from juanji import _core, nn

# ---------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------


def write_raw(path, header, data=b"", *, length=None):
    """A file in the safetensors layout built by hand: `header` is a dict (dumped as JSON)
    or raw bytes; `length` overrides the 8-byte header length."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + text + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def valid_header():
    """Two float32 tensors: 'w' (2, 2) at [0, 16] and 'b' (2,) at [16, 24]."""
    return {"w": entry("F32", [2, 2], 0, 16), "b": entry("F32", [2], 16, 24)}


VALID_DATA = np.arange(6, dtype="<f4").tobytes()


def as_arrays(tensors):
    return {name: np.asarray(t) for name, t in tensors.items()}


def assert_same_arrays(got, expected):
    assert list(got) == list(expected)
    for name, want in expected.items():
        have = np.asarray(got[name])
        assert have.dtype == want.dtype, name
        assert have.shape == want.shape, name
        np.testing.assert_array_equal(have, want, err_msg=name)


def sample_arrays():
    rng = np.random.default_rng(7)
    big = rng.standard_normal((6, 8))
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "double": rng.standard_normal((5, 2)),
        "labels": rng.integers(-(2**62), 2**62, size=7, dtype=np.int64),
        "scalar_f32": np.array(1.5, dtype=np.float32),
        "scalar_f64": np.array(-2.25),
        "scalar_i64": np.array(-3, dtype=np.int64),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "empty_i64": np.zeros((3, 0), dtype=np.int64),
        "strided": big[::2, 1::3],
        "transposed": big.T.astype(np.float32),
    }


# ---------------------------------------------------------------------------------
# Round trips and interchange
# ---------------------------------------------------------------------------------


def test_round_trip_numpy_arrays(tmp_path):
    arrays = sample_arrays()
    assert not arrays["strided"].flags.c_contiguous
    path = tmp_path / "model.safetensors"
    _core.save_safetensors(path, arrays)
    tensors, metadata = _core.load_safetensors(path)
    assert metadata == {}
    assert all(isinstance(t, _core.Tensor) for t in tensors.values())
    assert_same_arrays(as_arrays(tensors), {k: np.array(v, order="C") for k, v in arrays.items()})


def test_round_trip_juanji_tensors_including_views(tmp_path):
    base = _core.from_numpy(np.arange(24, dtype=np.float64).reshape(4, 6))
    view = base.transpose(0, 1)
    assert not view.is_contiguous()
    labels = _core.from_numpy(np.array([3, -1, 2**40], dtype=np.int64))
    path = tmp_path / "views.safetensors"
    _core.save_safetensors(str(path), {"view": view, "labels": labels, "base": base})
    tensors, _ = _core.load_safetensors(str(path))
    assert_same_arrays(
        as_arrays(tensors),
        {
            "view": np.arange(24.0).reshape(4, 6).T.copy(),
            "labels": np.array([3, -1, 2**40]),
            "base": np.arange(24.0).reshape(4, 6),
        },
    )


def test_other_integer_arrays_are_saved_as_int64(tmp_path):
    path = tmp_path / "ints.safetensors"
    _core.save_safetensors(path, {"u8": np.array([0, 255], dtype=np.uint8),
                                  "i32": np.array([-5, 7], dtype=np.int32)})
    tensors, _ = _core.load_safetensors(path)
    assert_same_arrays(as_arrays(tensors), {"u8": np.array([0, 255]), "i32": np.array([-5, 7])})


def test_metadata_round_trip(tmp_path):
    metadata = {"epoch": "12", "mean": "0.2860", "unicode": "卷积 ✓ 😀", "quote\"\\": "line\nbreak\t\x01"}
    path = tmp_path / "meta.safetensors"
    _core.save_safetensors(path, {"x": np.ones(3, np.float32)}, metadata)
    tensors, loaded = _core.load_safetensors(path)
    assert loaded == metadata
    assert list(tensors) == ["x"]


def test_saved_layout_matches_format(tmp_path):
    arrays = sample_arrays()
    path = tmp_path / "layout.safetensors"
    _core.save_safetensors(path, arrays, {"k": "v"})
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0
    header_text = raw[8:8 + length]
    assert header_text.rstrip(b" ").endswith(b"}")  # padded with spaces only
    header = json.loads(header_text)
    assert header.pop("__metadata__") == {"k": "v"}
    assert list(header) == list(arrays)  # written in the given order, with no gaps
    cursor = 0
    for _name, info in header.items():
        begin, end = info["data_offsets"]
        assert begin == cursor
        cursor = end
    assert 8 + length + cursor == len(raw)


def test_plain_numpy_can_read_our_file(tmp_path):
    arrays = sample_arrays()
    path = tmp_path / "plain.safetensors"
    _core.save_safetensors(path, arrays)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    data = raw[8 + length:]
    codes = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}
    for name, want in arrays.items():
        info = header[name]
        begin, end = info["data_offsets"]
        got = np.frombuffer(data[begin:end], dtype=codes[info["dtype"]]).reshape(info["shape"])
        assert got.dtype == want.dtype.newbyteorder("<")
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_safetensors_package_reads_our_file(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    safe_open = pytest.importorskip("safetensors").safe_open
    arrays = sample_arrays()
    path = tmp_path / "ours.safetensors"
    _core.save_safetensors(path, arrays, {"format": "np", "epoch": "3"})
    loaded = st_numpy.load_file(str(path))
    assert_same_arrays({k: loaded[k] for k in arrays}, {k: np.array(v, order="C") for k, v in arrays.items()})
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "np", "epoch": "3"}


def test_we_read_safetensors_package_file(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    arrays = {k: np.array(v, order="C") for k, v in sample_arrays().items()}
    path = tmp_path / "theirs.safetensors"
    st_numpy.save_file(arrays, str(path), metadata={"source": "safetensors"})
    tensors, metadata = _core.load_safetensors(path)
    assert metadata == {"source": "safetensors"}
    assert sorted(tensors) == sorted(arrays)
    got = as_arrays(tensors)
    assert_same_arrays({k: got[k] for k in arrays}, arrays)


def test_loaded_order_follows_data_offsets(tmp_path):
    header = {"late": entry("F32", [1], 4, 8), "early": entry("F32", [1], 0, 4)}
    path = write_raw(tmp_path / "order.safetensors", header, np.array([1, 2], "<f4").tobytes())
    tensors, _ = _core.load_safetensors(path)
    assert list(tensors) == ["early", "late"]
    assert np.asarray(tensors["late"]).tolist() == [2.0]


def test_header_json_escapes(tmp_path):
    header = (b'{"__metadata__": {"s": "a\\u00e9\\ud83d\\ude00\\n\\"q\\"\\/"}, '
              b'"w\\u00e9": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
    path = write_raw(tmp_path / "escapes.safetensors", header + b"   ", b"\0\0\x80?")
    tensors, metadata = _core.load_safetensors(path)
    assert metadata == {"s": 'aé😀\n"q"/'}
    assert np.asarray(tensors["wé"]).tolist() == [1.0]


def test_save_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    _core.save_safetensors(path, {"a": np.ones(4)})
    _core.save_safetensors(path, {"b": np.zeros(2, np.float32)})
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]
    tensors, _ = _core.load_safetensors(path)
    assert list(tensors) == ["b"]


def test_failed_save_keeps_old_file(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    _core.save_safetensors(path, {"a": np.ones(4)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"tensors\['bad'\]"):
        _core.save_safetensors(path, {"a": np.ones(4), "bad": np.array(["text"])})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]


@pytest.mark.cuda
def test_cuda_tensor_saves_from_device(tmp_path):
    if not _core.cuda_compiled() or _core.cuda_device_count() == 0:
        pytest.skip("needs a CUDA build and a visible GPU")
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    on_gpu = _core.from_numpy(host).to("cuda").transpose(0, 1)
    path = tmp_path / "cuda.safetensors"
    _core.save_safetensors(path, {"x": on_gpu})
    tensors, _ = _core.load_safetensors(path)
    np.testing.assert_array_equal(np.asarray(tensors["x"]), host.T)


# ---------------------------------------------------------------------------------
# Bad arguments to save / load
# ---------------------------------------------------------------------------------


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        _core.load_safetensors(tmp_path / "missing.safetensors")


class FsPath:
    """An os.PathLike that is neither str, bytes nor pathlib."""

    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return self.path


PATH_FORMS = {
    "str": str,
    "bytes": os.fsencode,
    "pathlib": pathlib.Path,
    "pathlike-str": FsPath,
    "pathlike-bytes": lambda p: FsPath(os.fsencode(p)),
}


@pytest.mark.parametrize("form", list(PATH_FORMS))
def test_every_path_form_names_the_same_file(tmp_path, form):
    path = PATH_FORMS[form](str(tmp_path / "m.safetensors"))
    model = nn.Sequential(nn.Linear(3, 2))
    model.save(path, metadata={"k": "v"})
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert juanji.load(path).architecture_json() == model.architecture_json()
    assert juanji.load_metadata(path) == {"k": "v"}
    _core.save_safetensors(path, {"x": np.ones(2)})
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert list(_core.load_safetensors(path)[0]) == ["x"]


def test_load_with_metadata_is_load_and_load_metadata_at_once(tmp_path):
    path = tmp_path / "m.safetensors"
    model = nn.Sequential(nn.Linear(3, 2))
    model.save(path, metadata={"k": "v"})
    loaded, metadata = _core.load_with_metadata(path)
    assert loaded.architecture_json() == model.architecture_json()
    np.testing.assert_array_equal(loaded[0].weight, model[0].weight)
    assert metadata == juanji.load_metadata(path) == {"k": "v"}


def test_model_metadata_is_checked_as_save_safetensors_checks_it(tmp_path):
    path = tmp_path / "m.safetensors"
    model = nn.Sequential(nn.ReLU())
    with pytest.raises(TypeError, match="^save: metadata must map str to str, got 'epoch': 3$"):
        model.save(path, metadata={"epoch": 3})
    with pytest.raises(TypeError, match="^save: metadata must be a dict of str -> str, got list$"):
        model.save(path, metadata=[("k", "v")])
    assert os.listdir(tmp_path) == []
    model.save(path, metadata=types.MappingProxyType({"k": "v"}))  # any mapping
    assert juanji.load_metadata(path) == {"k": "v"}


def test_bytes_path_that_is_not_utf8(tmp_path):
    """Names are bytes on Linux: open() takes any; so do we, and errors quote them escaped."""
    if not sys.platform.startswith("linux"):
        pytest.skip("other systems restrict file names to an encoding")
    path = os.fsencode(tmp_path) + b"/\xff.safetensors"
    _core.save_safetensors(path, {"x": np.ones(2)})
    assert os.listdir(os.fsencode(tmp_path)) == [b"\xff.safetensors"]
    assert list(_core.load_safetensors(path)[0]) == ["x"]
    with pytest.raises(FileNotFoundError, match=r"\\xffmissing"):
        _core.load_safetensors(os.fsencode(tmp_path) + b"/\xffmissing")
    with open(path, "wb") as f:
        f.write(b"plain text, not a checkpoint")
    with pytest.raises(ValueError, match=r"\\xff\.safetensors'?: not a safetensors file"):
        _core.load_safetensors(path)


PATH_FUNCTIONS = {
    "Sequential.save": lambda path: nn.Sequential(nn.ReLU()).save(path),
    "juanji.load": juanji.load,
    "juanji.load_metadata": juanji.load_metadata,
    "load_with_metadata": _core.load_with_metadata,
    "save_safetensors": lambda path: _core.save_safetensors(path, {"x": np.ones(1)}),
    "load_safetensors": _core.load_safetensors,
}


@pytest.mark.parametrize("function", list(PATH_FUNCTIONS))
@pytest.mark.parametrize("nul_path", ["m.st\0.txt", b"m.st\0.txt", FsPath("m.st\0.txt")],
                         ids=["str", "bytes", "pathlike"])
def test_nul_in_path_is_value_error_and_creates_nothing(tmp_path, monkeypatch, function, nul_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="^path: embedded null character$"):
        PATH_FUNCTIONS[function](nul_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("function", list(PATH_FUNCTIONS))
@pytest.mark.parametrize("bad", [42, None, ["m.st"], FsPath(3)], ids=["int", "None", "list", "fspath-int"])
def test_path_of_another_type_is_type_error(tmp_path, monkeypatch, function, bad):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="^path: expected"):
        PATH_FUNCTIONS[function](bad)
    assert os.listdir(tmp_path) == []


def test_save_rejects_bad_names_and_metadata(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="non-empty"):
        _core.save_safetensors(path, {"": np.ones(1)})
    with pytest.raises(ValueError, match="reserved"):
        _core.save_safetensors(path, {"__metadata__": np.ones(1)})
    with pytest.raises(TypeError, match="names must be str"):
        _core.save_safetensors(path, {1: np.ones(1)})
    with pytest.raises(TypeError, match="metadata must map str to str"):
        _core.save_safetensors(path, {"a": np.ones(1)}, {"epoch": 3})
    with pytest.raises(TypeError, match="dict"):
        _core.save_safetensors(path, [np.ones(1)])
    with pytest.raises(TypeError, match="uint64"):
        _core.save_safetensors(path, {"a": np.ones(1, np.uint64)})
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.save_safetensors(path, {"a": np.ones(1, np.float16)})
    assert not path.exists()


# ---------------------------------------------------------------------------------
# Corrupt files: one test per case, each a ValueError naming what is wrong
# ---------------------------------------------------------------------------------


@pytest.fixture
def ckpt(tmp_path):
    return tmp_path / "bad.safetensors"


def load_error(path, match):
    with pytest.raises(ValueError, match=match) as info:
        _core.load_safetensors(path)
    assert str(path) in str(info.value)  # the message names the file
    return info.value


def test_valid_baseline_loads(ckpt):
    tensors, _ = _core.load_safetensors(write_raw(ckpt, valid_header(), VALID_DATA))
    assert np.asarray(tensors["w"]).tolist() == [[0, 1], [2, 3]]


def test_corrupt_empty_file(ckpt):
    ckpt.write_bytes(b"")
    load_error(ckpt, "file is empty")


def test_corrupt_shorter_than_length_field(ckpt):
    ckpt.write_bytes(b"\x10\0\0\0\0")
    load_error(ckpt, "5 bytes, too short")


def test_corrupt_header_length_larger_than_file(ckpt):
    write_raw(ckpt, valid_header(), VALID_DATA, length=10_000)
    load_error(ckpt, "header length 10000 exceeds the")


def test_corrupt_header_length_huge(ckpt):
    write_raw(ckpt, valid_header(), VALID_DATA, length=2**63)
    load_error(ckpt, rf"not a safetensors file \(header length {2**63} exceeds the")


def test_text_file_is_not_a_safetensors_file(ckpt):
    ckpt.write_text("# training notes\nlr = 0.01\n")
    load_error(ckpt, r"not a safetensors file \(header length \d+ exceeds the 19 bytes")


def test_corrupt_header_not_json(ckpt):
    write_raw(ckpt, b"this is not json", VALID_DATA)
    load_error(ckpt, "header is not valid JSON")


def test_corrupt_header_nan_literal(ckpt):
    write_raw(ckpt, b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', b"\0" * 4)
    load_error(ckpt, "NaN is not valid JSON")


def test_corrupt_header_is_array(ckpt):
    write_raw(ckpt, b"[1, 2, 3]", VALID_DATA)
    load_error(ckpt, "header must be a JSON object, got array")


def test_corrupt_truncated_data(ckpt):
    write_raw(ckpt, valid_header(), VALID_DATA)
    ckpt.write_bytes(ckpt.read_bytes()[:-12])  # cut inside 'w'
    load_error(ckpt, r"truncated")


def test_corrupt_offsets_out_of_range(ckpt):
    header = valid_header()
    header["b"]["data_offsets"] = [16, 1 << 40]
    write_raw(ckpt, header, VALID_DATA)
    load_error(ckpt, r"tensor 'b': data_offsets \[16, 1099511627776\] reach past the 24 data bytes")


def test_corrupt_offsets_end_before_begin(ckpt):
    header = valid_header()
    header["b"]["data_offsets"] = [24, 16]
    write_raw(ckpt, header, VALID_DATA)
    load_error(ckpt, r"tensor 'b': data_offsets \[24, 16\] end before they begin")


def test_corrupt_offsets_size_mismatch_with_shape(ckpt):
    write_raw(ckpt, {"0.weight": entry("F32", [5, 5], 0, 96)}, b"\0" * 96)
    load_error(ckpt, r"tensor '0.weight': data_offsets \[0, 96\] hold 96 bytes but shape "
                     r"\(5, 5\) float32 needs 100")


def test_corrupt_overlapping_offsets(ckpt):
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [2], 8, 16)}
    write_raw(ckpt, header, b"\0" * 16)
    load_error(ckpt, "overlap")


def test_corrupt_gap_between_tensors(ckpt):
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}
    write_raw(ckpt, header, b"\0" * 12)
    load_error(ckpt, r"data bytes \[4, 8\] before tensor 'b' belong to no tensor")


def test_corrupt_trailing_bytes(ckpt):
    write_raw(ckpt, valid_header(), VALID_DATA + b"\0" * 8)
    load_error(ckpt, "last 8 data bytes belong to no tensor")


def test_corrupt_unsupported_dtype_f16(ckpt):
    write_raw(ckpt, {"h": entry("F16", [2], 0, 4)}, b"\0" * 4)
    load_error(ckpt, "unsupported dtype 'F16'")


def test_corrupt_unknown_dtype(ckpt):
    write_raw(ckpt, {"h": entry("XYZ", [2], 0, 8)}, b"\0" * 8)
    load_error(ckpt, "unknown dtype 'XYZ'")


def test_corrupt_negative_shape_entry(ckpt):
    write_raw(ckpt, {"w": entry("F32", [-1, 4], 0, 16)}, b"\0" * 16)
    load_error(ckpt, "shape entries must be non-negative integers")


def test_corrupt_shape_overflow(ckpt):
    write_raw(ckpt, {"w": entry("F32", [2**40, 2**40], 0, 16)}, b"\0" * 16)
    load_error(ckpt, "size overflow")


def test_corrupt_missing_data_offsets(ckpt):
    write_raw(ckpt, {"w": {"dtype": "F32", "shape": [4]}}, b"\0" * 16)
    load_error(ckpt, "tensor 'w': missing 'data_offsets'")


def test_corrupt_extra_key_in_entry(ckpt):
    header = {"w": dict(entry("F32", [1], 0, 4), extra=1)}
    write_raw(ckpt, header, b"\0" * 4)
    load_error(ckpt, "unexpected key 'extra'")


def test_corrupt_metadata_value_not_string(ckpt):
    header = {"__metadata__": {"epoch": 3}, **valid_header()}
    write_raw(ckpt, header, VALID_DATA)
    load_error(ckpt, "__metadata__ value for key 'epoch' must be a string, got number")


def test_corrupt_duplicate_key(ckpt):
    text = (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
            b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}')
    write_raw(ckpt, text, b"\0" * 8)
    load_error(ckpt, 'duplicate key "w"')


def test_corrupt_empty_tensor_name(ckpt):
    write_raw(ckpt, {"": entry("F32", [1], 0, 4)}, b"\0" * 4)
    load_error(ckpt, "empty name")


@pytest.mark.parametrize(
    ("header", "match"),
    [
        pytest.param(b'{"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}',
                     "non-negative integers", id="float-shape"),
        pytest.param(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}',
                     "two non-negative integers", id="negative-offset"),
        pytest.param(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}',
                     "two non-negative integers", id="one-offset"),
        pytest.param(b'{"w": {"dtype": "F32", "shape": [99999999999999999999], "data_offsets": [0, 4]}}',
                     "out of the int64 range", id="int64-overflow-literal"),
        pytest.param(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}} x',
                     "after the JSON value", id="trailing-garbage"),
        pytest.param(b'{"__metadata__": {"a": "x\ny"}}', "control character", id="control-char"),
        pytest.param(b'{"__metadata__": {"a": "\\ud800"}}', "surrogate", id="lone-surrogate"),
        pytest.param(b'{"__metadata__": {"a": "\xff"}}', "invalid UTF-8", id="bad-utf8"),
        pytest.param(b'{"__metadata__": {"a": "\\x"}}', "invalid escape", id="bad-escape"),
        pytest.param(b'{"__metadata__": {"a": Infinity}}', "Infinity", id="infinity"),
        pytest.param(b'{"__metadata__": {"a": ' + b"[" * 70 + b"]" * 70 + b"}}",
                     "nesting deeper than 64", id="deep-nesting"),
        pytest.param(b'{"__metadata__": {"a": "b",}}', "expected a string key", id="trailing-comma"),
        pytest.param(b'{"w": {"dtype": "F32", "shape": [01], "data_offsets": [0, 4]}}',
                     "leading zeros", id="leading-zero"),
        pytest.param(b'{"__metadata__": "text"}', "must be an object", id="metadata-not-object"),
        pytest.param(b'{"w": [1, 2]}', "expected an object", id="entry-not-object"),
    ],
)
def test_corrupt_header_strictness(ckpt, header, match):
    write_raw(ckpt, header, b"\0" * 4)
    load_error(ckpt, match)


def test_random_mutations_never_crash(tmp_path):
    """200 mutated or truncated copies of a valid file: each loads or raises ValueError."""
    source = tmp_path / "source.safetensors"
    _core.save_safetensors(source, {k: v for k, v in sample_arrays().items()}, {"epoch": "1"})
    original = source.read_bytes()
    (header_length,) = struct.unpack("<Q", original[:8])
    rng = random.Random(20240611)
    target = tmp_path / "mutated.safetensors"
    outcomes = {"loaded": 0, "rejected": 0}
    for _ in range(200):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["flip", "header-byte", "truncate", "delete", "insert", "length"])
            if not data:
                break
            if kind == "flip":
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif kind == "header-byte":  # JSON-significant characters hit the parser hardest
                pos = 8 + rng.randrange(min(header_length, max(len(data) - 8, 1)))
                if pos < len(data):
                    data[pos] = ord(rng.choice('{}[]",:-0123456789 eE.\\ntfu'))
            elif kind == "truncate":
                del data[rng.randrange(len(data)):]
            elif kind == "delete":
                pos = rng.randrange(len(data))
                del data[pos:pos + rng.randint(1, 16)]
            elif kind == "insert":
                pos = rng.randrange(len(data) + 1)
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            else:
                data[:8] = struct.pack("<Q", rng.choice([0, 1, header_length - 1, header_length + 8,
                                                         len(data), 2**64 - 1, rng.randrange(2**64)]))
        target.write_bytes(bytes(data))
        try:
            tensors, metadata = _core.load_safetensors(target)
        except ValueError:
            outcomes["rejected"] += 1
            continue
        outcomes["loaded"] += 1
        for t in tensors.values():
            np.asarray(t).sum()  # the data is really there
        assert all(isinstance(v, str) for v in metadata.values())
    assert outcomes["rejected"] > 100
