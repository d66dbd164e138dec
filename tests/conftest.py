"""Make tests/reference.py and tests/helpers.py importable as top-level modules
(``import reference``, ``from helpers import ...``) whatever pytest's import mode."""

import os
import sys

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
