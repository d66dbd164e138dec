"""Regenerates the type stubs of the extension module ``juanji._core``.

    python tests/update_stubs.py

writes python/juanji/_core/{__init__,kernels,nn,optim}.pyi from the *installed* juanji (run it
after ``pip install .``). tests/test_stubs.py fails while the checked-in stubs differ from what
this script would write. Needs the pybind11-stubgen pinned in pyproject's ``test`` extra: its
output changes between its releases, as does the signature text of pybind11 releases.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUB_DIR = ROOT / "python" / "juanji" / "_core"
MODULE = "juanji._core"
COMMAND = "python tests/update_stubs.py"


def _normalize(text: str) -> str:
    # stubgen leaves the indentation of a docstring's empty lines behind; the pre-commit hooks
    # want no trailing whitespace and exactly one final newline.
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(lines).rstrip("\n") + "\n"


def generate() -> dict[str, str]:
    """The stubs as {file name inside python/juanji/_core: text}, from the installed module."""
    with tempfile.TemporaryDirectory() as out:
        # Run from the temporary directory so that `juanji` is the installed package, never the
        # source tree (which has no compiled _core).
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        subprocess.run(
            [sys.executable, "-m", "pybind11_stubgen", MODULE, "--output-dir", out],
            cwd=out,
            env=env,
            check=True,
        )
        package = Path(out, *MODULE.split("."))
        files = sorted(package.rglob("*.pyi"))
        if not files:
            raise RuntimeError(f"pybind11-stubgen wrote no stubs for {MODULE} under {out}")
        return {f.relative_to(package).as_posix(): _normalize(f.read_text(encoding="utf-8")) for f in files}


def checked_in() -> dict[str, str]:
    """The stubs in the source tree, in generate()'s form."""
    return {f.relative_to(STUB_DIR).as_posix(): f.read_text(encoding="utf-8") for f in sorted(STUB_DIR.rglob("*.pyi"))}


def main() -> int:
    try:
        import pybind11_stubgen  # noqa: F401
    except ImportError:
        print("pybind11-stubgen is missing: pip install the version pinned in pyproject's test extra")
        return 1
    stubs = generate()
    for old in STUB_DIR.rglob("*.pyi"):
        old.unlink()
    for name, text in stubs.items():
        path = STUB_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {len(stubs)} stub files to {STUB_DIR.relative_to(ROOT)}: {', '.join(stubs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
