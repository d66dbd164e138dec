"""The C++ library passes its ctest checks and installs as a CMake package that an outside
program can find and link: from a CMake install, and from the wheel (`pip install .` puts the
package in juanji/lib/cmake/juanji, which `python -m juanji --cmake-dir` prints)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
