"""The C++ library passes its ctest checks and installs as a CMake package that an outside
program can find and link: from a CMake install, and from the wheel (`pip install .` puts the
package in juanji/lib/cmake/juanji, which `python -m juanji --cmake-dir` prints)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import juanji

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd, **kw):
    subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
def test_find_package_builds_and_runs_outside_program(tmp_path):
    build, prefix, app = tmp_path / "build", tmp_path / "prefix", tmp_path / "app"
    jobs = str(os.cpu_count() or 2)
    try:
        run(["cmake", "-S", str(ROOT), "-B", str(build), "-DJUANJI_CUDA=OFF", "-DJUANJI_BUILD_TESTS=ON",
             f"-DCMAKE_INSTALL_PREFIX={prefix}"])
        run(["cmake", "--build", str(build), "-j", jobs])
        run(["ctest", "--test-dir", str(build), "--output-on-failure"])
        run(["cmake", "--install", str(build)])
        run(["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(app), f"-DCMAKE_PREFIX_PATH={prefix}"])
        run(["cmake", "--build", str(app)])
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{e.cmd} failed:\n{e.stdout}\n{e.stderr}")
    assert (prefix / "lib" / "cmake" / "juanji" / "juanjiConfig.cmake").exists() or any(
        prefix.glob("lib*/cmake/juanji/juanjiConfig.cmake")
    )
    result = subprocess.run([str(app / "edge_detect")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
def test_outside_program_builds_against_the_pip_installed_package(tmp_path):
    cmake_dir = subprocess.run([sys.executable, "-m", "juanji", "--cmake-dir"], capture_output=True, text=True)
    assert cmake_dir.returncode == 0, cmake_dir.stderr
    juanji_dir = cmake_dir.stdout.strip()
    package = Path(juanji_dir).parents[2]
    assert package == Path(juanji._core.__file__).parent  # the package folder: include/, lib/
    assert (package / "include" / "juanji" / "juanji.hpp").is_file()
    assert (package / "include" / "juanji" / "build_config.hpp").is_file()
    # Relocatable: the package names its files relative to itself, never the tree it was built in.
    for path in Path(juanji_dir).iterdir():
        assert str(ROOT) not in path.read_text(), path
    app = tmp_path / "app"
    try:
        run(["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(app), f"-Djuanji_DIR={juanji_dir}"])
        run(["cmake", "--build", str(app)])
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{e.cmd} failed:\n{e.stdout}\n{e.stderr}")
    result = subprocess.run([str(app / "edge_detect")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"juanji {juanji.__version__}" in result.stdout and "ok" in result.stdout
    check_classify(app / "classify", tmp_path)


def check_classify(classify, tmp_path):
    """examples/cpp/classify.cpp gives the accuracy Python's evaluate gives for a model `juanji
    train` wrote, on IDX files raw and gzipped."""
    from juanji import data

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 300, dtype=np.uint8)
    juanji.manual_seed(0)
    model = juanji.models.lenet5()
    mean, std = 0.25, 0.5
    model.save(tmp_path / "model.safetensors", metadata={"mean": repr(mean), "std": repr(std)})
    x = data.normalize(data.to_float_images(images), mean, std)
    _, accuracy = model.evaluate(x, labels.astype(np.int64))
    data.write_idx(tmp_path / "images-idx3-ubyte", images)
    data.write_idx(tmp_path / "labels-idx1-ubyte.gz", labels)
    result = subprocess.run([str(classify), str(tmp_path / "model.safetensors"), str(tmp_path / "images-idx3-ubyte"),
                             str(tmp_path / "labels-idx1-ubyte.gz"), "--batch", "64"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"accuracy {100 * accuracy:.2f}% ({round(accuracy * 300)} of 300)" in result.stdout
    assert "300 images in" in result.stdout and "images/s" in result.stdout
    # A server's way: 4 worker threads classify one image at a time on the one model.
    served = subprocess.run([str(classify), str(tmp_path / "model.safetensors"), str(tmp_path / "images-idx3-ubyte"),
                             str(tmp_path / "labels-idx1-ubyte.gz"), "--batch", "1", "--workers", "4"],
                            capture_output=True, text=True)
    assert served.returncode == 0, served.stdout + served.stderr
    assert f"accuracy {100 * accuracy:.2f}% ({round(accuracy * 300)} of 300)" in served.stdout
    assert "(batch 1, 4 workers," in served.stdout
    bad = subprocess.run([str(classify), str(tmp_path / "model.safetensors"), str(tmp_path / "labels-idx1-ubyte.gz")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "not an IDX file of bytes with 3 dimensions" in bad.stderr
