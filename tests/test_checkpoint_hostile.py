"""Model checkpoints built by hand to make juanji.load misbehave: each must be refused with a
ValueError naming the file and what is wrong, quickly and without allocating memory the file
does not justify."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import juanji


def linear(in_features, out_features, bias=True):
    return {"type": "Linear", "config": {"in_features": in_features, "out_features": out_features,
                                         "bias": bias}}


def conv2d(in_channels, out_channels, kernel_size, groups=1, bias=True):
    return {"type": "Conv2d", "config": {
        "in_channels": in_channels, "out_channels": out_channels, "kernel_size": [kernel_size] * 2,
        "stride": [1], "padding": [0], "dilation": [1], "groups": groups, "bias": bias}}


HUGE_LAYERS = [linear(12000, 12000), conv2d(4096, 4096, 11), {"type": "BatchNorm2d", "config": {
    "channels": 2**40, "eps": 1e-5, "momentum": 0.1}}]


def write_model(path, layers, tensors=(), *, length=None, data_size=None, note="hand-made"):
    """A juanji checkpoint written byte by byte: the architecture `layers`, `tensors` as
    (name, dtype code, shape) laid out one after another and filled with zeros. `length`
    overrides the 8-byte header length, `data_size` the number of data bytes written."""
    header = {"__metadata__": {"format": "juanji", "architecture": json.dumps(layers),
                               "note": note}}
    offset = 0
    for name, dtype, shape in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * {"F32": 4, "F64": 8, "I64": 8}[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header).encode()
    data = bytes(offset if data_size is None else data_size)
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


@pytest.fixture
def ckpt(tmp_path):
    return tmp_path / "hostile.safetensors"


def refused(path, match):
    with pytest.raises(ValueError, match=match) as info:
        juanji.load(path)
    assert f"'{path}'" in str(info.value)  # the message names the file


def test_the_hand_made_writer_makes_loadable_files(ckpt):
    write_model(ckpt, [linear(3, 2), {"type": "ReLU", "config": {}}],
                [("0.weight", "F32", (2, 3)), ("0.bias", "F32", (2,))])
    model = juanji.load(ckpt)
    np.testing.assert_array_equal(np.asarray(model(np.ones((1, 3), np.float32))), [[0, 0]])


def test_huge_architecture_without_tensors_fails_within_a_memory_cap(ckpt):
    """Before the tensor table was checked first, this 200-byte file made load() build and
    initialise gigabytes of layers. With the address space capped at 300 MiB above what the
    interpreter already maps, it must fail with a ValueError, not MemoryError or a crash."""
    if not sys.platform.startswith("linux"):
        pytest.skip("caps memory with RLIMIT_AS and reads the mapped size from /proc")
    with open("/proc/self/maps") as maps:
        if "libasan" in maps.read():
            pytest.skip("AddressSanitizer's shadow memory does not work under RLIMIT_AS")
    write_model(ckpt, HUGE_LAYERS)
    assert ckpt.stat().st_size < 600
    script = textwrap.dedent("""
        import resource, sys
        import numpy as np
        import juanji
        mapped = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                      if line.startswith("VmSize:"))
        cap = mapped + (300 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            juanji.load(sys.argv[1])
        except ValueError as e:
            print("ValueError:", e)
        try:  # the cap is real: the first layer's weight alone would not fit under it
            np.empty(12000 * 12000 * 4, np.uint8)
        except MemoryError:
            print("capped")
    """)
    done = subprocess.run([sys.executable, "-c", script, str(ckpt)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"ValueError: checkpoint '{ckpt}': tensor '0.weight' of shape (12000, 12000) is missing",
        "capped"]


def test_load_metadata_builds_no_layer(ckpt):
    # load() would refuse this file (its tensors are missing); the metadata is in the header.
    write_model(ckpt, HUGE_LAYERS, note="kept")
    assert juanji.load_metadata(ckpt) == {"note": "kept"}


def test_first_missing_tensor_is_named(ckpt):
    write_model(ckpt, [linear(3, 2), linear(2, 2)], [("0.weight", "F32", (2, 3)),
                                                     ("0.bias", "F32", (2,))])
    refused(ckpt, r"tensor '1\.weight' of shape \(2, 2\) is missing")


def test_mismatched_shape(ckpt):
    write_model(ckpt, [linear(3, 2)], [("0.weight", "F32", (2, 4)), ("0.bias", "F32", (2,))])
    refused(ckpt, r"tensor '0\.weight' has shape \(2, 4\) but the architecture needs \(2, 3\)")


def test_extra_tensor(ckpt):
    write_model(ckpt, [linear(3, 2, bias=False)], [("0.weight", "F32", (2, 3)),
                                                   ("0.bias", "F32", (2,))])
    refused(ckpt, r"tensor '0\.bias' is not part of the architecture")


def test_integer_parameter(ckpt):
    write_model(ckpt, [linear(3, 2)], [("0.weight", "I64", (2, 3)), ("0.bias", "F32", (2,))])
    refused(ckpt, r"tensor '0\.weight' has dtype int64; parameters are float32 or float64")


def test_tensor_bytes_past_the_end_of_the_file(ckpt):
    write_model(ckpt, [linear(3, 2)], [("0.weight", "F32", (2, 3)), ("0.bias", "F32", (2,))],
                data_size=24)
    refused(ckpt, r"tensor '0\.bias': data_offsets \[24, 32\] reach past the 24 data bytes")


def test_header_length_larger_than_the_file(ckpt):
    write_model(ckpt, [linear(3, 2)], [("0.weight", "F32", (2, 3)), ("0.bias", "F32", (2,))],
                length=1 << 20)
    refused(ckpt, r"not a safetensors file \(header length 1048576 exceeds the \d+ bytes")


@pytest.mark.parametrize("text", ["hello\n", "# notes\nepochs = 10\nlr = 0.01\n"], ids=["short", "long"])
@pytest.mark.parametrize("function", [juanji.load, juanji.load_metadata], ids=["load", "load_metadata"])
def test_text_file_is_not_a_safetensors_file(ckpt, text, function):
    ckpt.write_text(text)
    with pytest.raises(ValueError, match="not a safetensors file") as info:
        function(ckpt)
    assert f"'{ckpt}'" in str(info.value)


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        pytest.param(linear(-3, 2), "in_features must be positive, got -3", id="negative-size"),
        pytest.param(conv2d(4, 4, 3, groups=0), "groups must be positive, got 0", id="zero-groups"),
        pytest.param(linear(2**62, 2**62), r"tensor '0\.weight' of shape \(4611686018427387904, "
                                           r"4611686018427387904\) is missing", id="overflowing-size"),
        pytest.param({"type": "Conv9d", "config": {}}, "unknown layer type 'Conv9d'", id="unknown-type"),
    ],
)
def test_bad_layer_configs_are_refused_before_any_layer_is_built(ckpt, layer, match):
    write_model(ckpt, [layer])
    refused(ckpt, match)


def test_config_the_table_cannot_check_is_refused_by_the_layer(ckpt):
    """groups=3 does not divide 4 channels: the tensors match what the config declares, and
    the layer's constructor refuses it."""
    write_model(ckpt, [conv2d(4, 3, 1, groups=3)], [("0.weight", "F32", (3, 1, 1, 1)),
                                                    ("0.bias", "F32", (3,))])
    refused(ckpt, r"bad architecture: layer 0: Conv2d: groups=3 must divide in_channels 4")
