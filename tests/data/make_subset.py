"""Writes tests/data/fashion-mnist-subset/: a small, class-balanced slice of real Fashion-MNIST.

The first TRAIN_PER_CLASS training images and the first TEST_PER_CLASS test images of every
class, in their original file order (the source files are already shuffled, so any prefix of
the subset stays roughly balanced too). The output is gzipped IDX with the standard names and
is byte-identical from run to run. The sizes keep the four files under 300 KB in all.

    python tests/data/make_subset.py [--source /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from juanji.data import CLASS_NAMES, DEFAULT_DIR, STANDARD_FILES, find_idx_file, read_idx, write_idx

TRAIN_PER_CLASS = 50
TEST_PER_CLASS = 10
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion-mnist-subset")


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices (in file order) of the first ``per_class`` examples of every class."""
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASS_NAMES))]
    for c, index in enumerate(chosen):
        if len(index) < per_class:
            raise ValueError(f"class {c} has only {len(index)} examples, need {per_class}")
    return np.sort(np.concatenate(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=DEFAULT_DIR, help="directory with the full data set")
    parser.add_argument("--out", default=OUT_DIR, help="directory to write the subset into")
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        images = read_idx(find_idx_file(args.source, STANDARD_FILES[f"{split}_images"]))
        labels = read_idx(find_idx_file(args.source, STANDARD_FILES[f"{split}_labels"]))
        index = first_per_class(labels, per_class)
        for key, array in ((f"{split}_images", images[index]), (f"{split}_labels", labels[index])):
            path = os.path.join(args.out, STANDARD_FILES[key] + ".gz")
            write_idx(path, array)
            print(f"{path}: {array.shape} {array.dtype}, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
