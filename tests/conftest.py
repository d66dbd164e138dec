"""Make tests/reference.py and tests/helpers.py importable as top-level modules
(``import reference``, ``from helpers import ...``) whatever pytest's import mode."""

import os
import sys

import pytest

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


@pytest.fixture
def restore_runtime():
    """Puts the thread count and SIMD level back as they were after a test that changes them."""
    import juanji

    threads, level = juanji.get_num_threads(), juanji.simd_level()
    yield
    juanji.set_num_threads(threads)
    juanji.set_simd_level(level)
