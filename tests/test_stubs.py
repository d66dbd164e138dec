"""The checked-in stubs of juanji._core (python/juanji/_core/*.pyi) match the installed module."""

import difflib
from pathlib import Path

import pytest

import juanji
import update_stubs  # tests/ is on sys.path through conftest.py


def test_stubs_are_up_to_date():
    pytest.importorskip("pybind11_stubgen")
    fresh = update_stubs.generate()
    stored = update_stubs.checked_in()
    diff = []
    for name in sorted(fresh.keys() | stored.keys()):
        diff += difflib.unified_diff(
            stored.get(name, "").splitlines(keepends=True),
            fresh.get(name, "").splitlines(keepends=True),
            f"checked in: {name}",
            f"generated: {name}",
        )
    assert not diff, (
        "python/juanji/_core/*.pyi differ from the installed juanji._core; regenerate them with "
        f"`{update_stubs.COMMAND}` (after `pip install .`) and commit them:\n" + "".join(diff[:200])
    )


def test_stubs_are_installed():
    # The stubs ship in the wheel beside the extension, and py.typed marks the package as typed.
    package = Path(juanji.__file__).parent
    assert (package / "py.typed").is_file()
    assert sorted(p.name for p in (package / "_core").glob("*.pyi")) == sorted(update_stubs.checked_in())
