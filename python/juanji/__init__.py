"""juanji (卷积): a CNN library with a C++ core (OpenMP, SIMD, optional CUDA).

Every numeric routine lives in the C++ extension ``juanji._core``; this package re-exports it
and adds the pieces that are naturally Python (layer objects, data loading, the CLI).
"""

import os

# GNU OpenMP's idle threads spin for ~300k iterations before sleeping. When other processes
# compete for the cores, that spinning steals the time slices the working threads need; but a
# thread that went to sleep costs ~0.5 ms to wake on a virtual machine (measured on 2 cores: a
# 0.14 ms convolution took 0.77 ms with 10k spins). 100k spins keeps the hand-offs between
# back-to-back calls quick and matched 10k under load. Users' settings win; it must be set
# before the OpenMP runtime loads with the extension.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "100000")

from . import _core  # noqa: E402
from ._core import *  # noqa: F401,F403  (the functional API is the core's)
from ._core import Tensor, config_string, get_num_threads, load, load_metadata, set_num_threads
from ._selftest import selftest  # noqa: E402
from .onnx_io import import_onnx  # noqa: E402  (the onnx package itself loads on first use)

# The core's submodules are re-exported by the Python modules of the same names.
del nn, optim, kernels, data, distributed  # noqa: F821

__version__ = _core.version()


def show_config() -> None:
    """Prints the version, compiler, OpenMP threads, SIMD level (detected and in use), CUDA and MPI."""
    print(config_string(), end="")


def cmake_dir() -> str:
    """The folder of juanji's CMake package (``juanjiConfig.cmake``) that ``pip install`` puts
    beside the extension, with the headers and the C++ library, for C++ programs to build with:
    ``cmake -Djuanji_DIR=$(python -m juanji --cmake-dir) ...``, then ``find_package(juanji)``.

    Raises FileNotFoundError when this copy of juanji was built without it (for instance with
    scikit-build-core's ``install.components = ["python"]``).
    """
    # Beside _core rather than __file__: an editable install keeps the Python files in the source
    # tree and what CMake installed in site-packages.
    path = os.path.join(os.path.dirname(os.path.abspath(_core.__file__)), "lib", "cmake", "juanji")
    if not os.path.isfile(os.path.join(path, "juanjiConfig.cmake")):
        raise FileNotFoundError(
            f"juanji's CMake package is not installed (no juanjiConfig.cmake in {path}): this copy "
            "was built without the C++ library; reinstall with `pip install .`, or build and install "
            "it with CMake (README, C++)")
    return path


def __getattr__(name):
    # Submodules that pull in more (layers, optimisers, data) load on first use.
    import importlib

    if name in {"nn", "optim", "data", "kernels", "models", "distributed"}:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Tensor", "show_config", "cmake_dir", "selftest", "get_num_threads", "set_num_threads", "load",
           "load_metadata", "import_onnx", "__version__"]
