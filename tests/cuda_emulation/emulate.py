"""Builds juanji with its CUDA backend running on a CPU emulation of the GPU, and runs pytest on it.

Where no GPU is at hand this is how the CUDA kernels get exercised: every kernel launch in
cpp/src/cuda becomes a call into emulator.cpp, which runs each block as real threads (one per CUDA
thread) meeting at real barriers, so shared-memory races show up under ThreadSanitizer
(--sanitize thread) and out-of-bounds accesses under AddressSanitizer (--sanitize address, which
also poisons "device" memory outside kernels: host code reading a device pointer is reported).
Blocks run one at a time in a shuffled order (JUANJI_EMU_SEED). Float results can differ from a
GPU's in the last bits (host libm, no fused multiply-add), and the emulation says nothing about
speed. It does not replace a run on a real GPU: it catches indexing, bounds, barrier and dispatch
bugs before one.

    python tests/cuda_emulation/emulate.py [--sanitize address|thread] [--build-dir DIR] \
        [-- pytest arguments, default: tests/test_cuda.py -q]

Run it with a Python that has numpy, pytest and pybind11 but not juanji itself installed (the
emulated build is put first on PYTHONPATH, but an editable install would take precedence).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """text split at `sep` outside parentheses, brackets and braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def translate_launches(source: str, path: str) -> str:
    """Rewrites every `kernel<<<grid, block>>>(args);` as an emu::launch call whose arguments are
    evaluated once, on the launching thread, as a real launch does."""
    out, pos = [], 0
    while True:
        at = source.find("<<<", pos)
        if at < 0:
            out.append(source[pos:])
            return "".join(out)
        start = max(source.rfind(c, 0, at) for c in ";{}") + 1
        kernel = source[start:at]
        close = source.find(">>>", at)
        config = split_top_level(source[at + 3:close])
        if len(config) != 2 or source[close + 3] != "(":
            raise SystemExit(f"{path}: cannot translate the launch at offset {at}")
        depth, end = 0, close + 3
        while True:
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            if depth == 0:
                break
            end += 1
        if source[end + 1] != ";":
            raise SystemExit(f"{path}: launch at offset {at} is not a statement")
        args = " ".join(source[close + 4:end].split())
        indent = kernel[: len(kernel) - len(kernel.lstrip())]
        out.append(source[pos:start])
        out.append(
            f"{indent}::emu::launch(dim3({config[0]}), dim3({config[1]}), "
            f"[&, emu_args = std::make_tuple({args})]() {{ std::apply([](const auto&... emu_a) "
            f"{{ {kernel.strip()}(emu_a...); }}, emu_args); }});"
        )
        # Same line count as the original, so compiler messages point at the real lines.
        out.append("\n" * source.count("\n", at, end + 2))
        pos = end + 2


def translate(dest: str) -> None:
    src_dir = os.path.join(REPO, "cpp", "src", "cuda")
    out_dir = os.path.join(dest, "cuda")
    os.makedirs(out_dir, exist_ok=True)
    wanted = set()
    for name in sorted(os.listdir(src_dir)):
        with open(os.path.join(src_dir, name)) as f:
            text = f'#line 1 "{os.path.join(src_dir, name)}"\n' + translate_launches(f.read(), name)
        # .cu files become C++ sources; headers keep their names (they are included by them).
        target = os.path.join(out_dir, name + ".cpp" if name.endswith(".cu") else name)
        wanted.add(target)
        if os.path.exists(target) and open(target).read() == text:
            continue  # unchanged: keep the timestamp, so the build stays incremental
        with open(target, "w") as f:
            f.write(text)
    for name in os.listdir(out_dir):
        if os.path.join(out_dir, name) not in wanted:
            os.remove(os.path.join(out_dir, name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sanitize", choices=["address", "thread"], default=None)
    parser.add_argument("--build-dir", default=None)
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()

    build = os.path.abspath(args.build_dir or os.path.join(REPO, "build", f"emulation-{args.sanitize or 'plain'}"))
    translated = os.path.join(build, "translated")
    translate(translated)
    import pybind11

    subprocess.run(["cmake", "-S", HERE, "-B", build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                    f"-DEMU_TRANSLATED={translated}", f"-DEMU_SANITIZE={args.sanitize or ''}",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", build, "-j", os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "1")], check=True)

    package = os.path.join(build, "package", "juanji")
    shutil.rmtree(os.path.dirname(package), ignore_errors=True)
    shutil.copytree(os.path.join(REPO, "python", "juanji"), package)
    for name in os.listdir(build):
        if re.match(r"_core\..*\.so$", name):
            shutil.copy(os.path.join(build, name), package)
    if args.build_only:
        return 0

    env = dict(os.environ, PYTHONPATH=os.path.dirname(package))
    if args.sanitize:
        # The sanitizer runtime first, and libstdc++ at start-up too: the interceptors of C++
        # exceptions need it loaded before Python loads the extension.
        runtime = {"address": "libasan.so", "thread": "libtsan.so"}[args.sanitize]
        libs = [subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
                for name in (runtime, "libstdc++.so")]
        env["LD_PRELOAD"] = " ".join(libs)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
        if args.sanitize == "address":
            env.setdefault("JUANJI_CUDA_CACHING", "0")  # freed blocks really go: use-after-free shows
        env.setdefault("TSAN_OPTIONS", "halt_on_error=1")
    pytest_args = args.pytest_args or [os.path.join(REPO, "tests", "test_cuda.py"), "-q"]
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *pytest_args],
                          cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
