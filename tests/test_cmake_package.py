"""The C++ library passes its ctest checks and installs as a CMake package that an outside
program can find and link."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
