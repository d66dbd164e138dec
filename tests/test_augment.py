"""Augmented mini-batches (juanji.data.augmented_batches, the C++ BatchLoader): each batch against
a NumPy reference of pad + crop + flip, determinism, coverage of the epoch, the random choices'
distribution, the worker thread's life (abandonment, errors, several consumers), bad arguments,
and `juanji train --augment`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import juanji
from juanji import cli, data, plots

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SUBSET_DIR = os.path.join(TESTS_DIR, "data", "fashion-mnist-subset")


def distinct_images(n, c=1, h=5, w=6, seed=0):
    """Images whose every pixel differs from every other (no crop or flip of one image equals
    a crop or flip of another), labelled by their index."""
    x = np.random.default_rng(seed).permutation(n * c * h * w).astype(np.float32) + 1
    return x.reshape(n, c, h, w), np.arange(n, dtype=np.int64)


def reference_batches(x, y, batch_size, plan, crop_padding, fill):
    """What the batches must be, from the plan: np.pad, a slice, and [..., ::-1]."""
    p = crop_padding
    h, w = x.shape[2:]
    images = []
    for index, top, left, flipped in zip(*plan):
        padded = np.pad(x[index], ((0, 0), (p, p), (p, p)), constant_values=fill)
        crop = padded[:, top:top + h, left:left + w]
        images.append(crop[:, :, ::-1] if flipped else crop)
    images = np.array(images, dtype=np.float32).reshape((len(plan.order),) + x.shape[1:])
    labels = y[plan.order]
    return [(images[s:s + batch_size], labels[s:s + batch_size])
            for s in range(0, len(labels), batch_size)]


def assert_same_batches(actual, expected):
    assert len(actual) == len(expected)
    for (xa, ya), (xe, ye) in zip(actual, expected):
        assert xa.dtype == np.float32 and ya.dtype == np.int64
        np.testing.assert_array_equal(xa, xe)
        np.testing.assert_array_equal(ya, ye)


# ---- the batches against the NumPy reference -----------------------------------------------

@pytest.mark.parametrize("n, shape, batch_size, crop_padding, flip", [
    (23, (1, 5, 6), 4, 2, True),     # the last batch smaller
    (16, (3, 4, 4), 16, 1, True),    # one batch, several channels
    (10, (2, 3, 7), 3, 9, True),     # padding larger than the image: some crops are all fill
    (12, (1, 6, 5), 5, 3, False),
    (12, (1, 6, 5), 5, 0, True),
    (7, (1, 1, 1), 2, 1, True),
], ids=["ragged", "channels", "wide_padding", "crop_only", "flip_only", "one_pixel"])
def test_batches_are_the_padded_crops_and_flips_of_the_plan(n, shape, batch_size, crop_padding,
                                                           flip):
    x, y = distinct_images(n, *shape)
    fill = -0.75
    kw = dict(seed=3, epoch=5, crop_padding=crop_padding, flip=flip)
    plan = data.augmentation_plan(n, **kw)
    assert sorted(plan.order) == list(range(n))
    assert plan.crop_top.min() >= 0 and plan.crop_top.max() <= 2 * crop_padding
    assert plan.crop_left.min() >= 0 and plan.crop_left.max() <= 2 * crop_padding
    assert flip or not plan.flipped.any()
    batches = list(data.augmented_batches(x, y, batch_size, fill=fill, **kw))
    assert_same_batches(batches, reference_batches(x, y, batch_size, plan, crop_padding, fill))


def find_transform(image, original, p, fill):
    """The (top, left, flipped) whose crop of the padded original is `image`, searched over all
    (2p+1)^2 * 2 candidates; the one match, or None."""
    h, w = original.shape[1:]
    padded = np.pad(original, ((0, 0), (p, p), (p, p)), constant_values=fill)
    matches = [(top, left, flipped)
               for top in range(2 * p + 1) for left in range(2 * p + 1) for flipped in (False, True)
               if np.array_equal(image, (lambda c: c[:, :, ::-1] if flipped else c)(
                   padded[:, top:top + h, left:left + w]))]
    return matches[0] if len(matches) == 1 else None


def test_each_image_is_a_shifted_copy_of_its_padded_original():
    # Without the plan: every output image is found among the crops and flips of the image its
    # label names, every offset and both flips occur, and about half the images are flipped.
    n, p = 400, 2
    x, y = distinct_images(n, 1, 7, 8, seed=1)
    found = []
    for images, labels in data.augmented_batches(x, y, 32, seed=0, epoch=0, crop_padding=p,
                                                 fill=0.0):
        for image, label in zip(images, labels):
            transform = find_transform(image, x[label], p, 0.0)
            assert transform is not None, f"image labelled {label} is no crop or flip of it"
            found.append(transform)
    assert len(found) == n
    tops, lefts, flips = (np.array(v) for v in zip(*found))
    assert set(tops) == set(lefts) == set(range(2 * p + 1))
    # 400 fair coins: the fraction lies within 0.5 +- 0.1 (4.5 standard deviations).
    assert abs(flips.mean() - 0.5) < 0.1


def test_flips_and_offsets_are_evenly_spread():
    n, p = 50_000, 3
    plan = data.augmentation_plan(n, seed=11, epoch=2, crop_padding=p)
    # Within 4.5 standard deviations of the expected counts.
    assert abs(plan.flipped.mean() - 0.5) < 4.5 * np.sqrt(0.25 / n)
    expected = n / (2 * p + 1)
    for offsets in (plan.crop_top, plan.crop_left):
        counts = np.bincount(offsets, minlength=2 * p + 1)
        assert len(counts) == 2 * p + 1
        assert np.all(np.abs(counts - expected) < 4.5 * np.sqrt(expected))
    # The first image's position is uniform too.
    first_positions = [np.argmax(data.augmentation_plan(5, seed=s, epoch=0).order == 0)
                       for s in range(2000)]
    assert np.all(np.abs(np.bincount(first_positions, minlength=5) - 400) < 4.5 * np.sqrt(320))


# ---- determinism and coverage ---------------------------------------------------------------

def epoch(x, y, batch_size=8, **kw):
    kw = {"seed": 0, "epoch": 0, **kw}
    return list(data.augmented_batches(x, y, batch_size, **kw))


def test_same_seed_and_epoch_give_the_same_batches():
    x, y = distinct_images(50)
    assert_same_batches(epoch(x, y, seed=7, epoch=3), epoch(x, y, seed=7, epoch=3))


@pytest.mark.parametrize("change", [{"epoch": 4}, {"seed": 8}], ids=["epoch", "seed"])
def test_another_epoch_or_seed_gives_another_order(change):
    x, y = distinct_images(50)
    first = np.concatenate([labels for _, labels in epoch(x, y, seed=7, epoch=3)])
    other = np.concatenate([labels for _, labels in epoch(x, y, **{"seed": 7, "epoch": 3, **change})])
    assert sorted(first) == sorted(other) and not np.array_equal(first, other)


def test_every_image_comes_once_with_its_label():
    x, y = distinct_images(37)
    labels = np.array([10 * i + 3 for i in range(37)])
    batches = epoch(x, labels, batch_size=5, crop_padding=0, flip=False)
    assert [len(b) for _, b in batches] == [5] * 7 + [2]
    images = np.concatenate([b for b, _ in batches])
    order = (np.concatenate([b for _, b in batches]) - 3) // 10
    assert sorted(order) == list(range(37))
    np.testing.assert_array_equal(images, x[order])


def test_without_crop_and_flip_the_batches_are_the_plain_shuffled_ones():
    x, y = distinct_images(30)
    plain = epoch(x, y, seed=2, epoch=1, crop_padding=0, flip=False)
    order = data.augmentation_plan(30, seed=2, epoch=1).order
    assert_same_batches(plain, [(x[order[s:s + 8]], y[order[s:s + 8]]) for s in range(0, 30, 8)])
    # The order does not depend on whether crops and flips are on.
    augmented = epoch(x, y, seed=2, epoch=1, crop_padding=4, flip=True)
    np.testing.assert_array_equal(np.concatenate([b for _, b in augmented]), order)


@pytest.mark.parametrize("n, batch_size, shards", [(23, 8, 3), (22, 8, 3), (16, 8, 2), (5, 7, 5), (9, 4, 1)],
                         ids=["uneven_slices", "last_batch_too_small", "even", "one_row_each", "one_shard"])
def test_shards_are_the_slices_of_the_whole_batches(n, batch_size, shards):
    """Each shard makes exactly its rows of every batch (rank * rows // shards on), so the ranks of
    a data-parallel run together see the single-process batches; a last batch with fewer rows
    than shards is left out by every shard."""
    x, y = distinct_images(n)
    kw = {"seed": 3, "epoch": 1, "crop_padding": 2, "flip": True}
    whole = list(data.augmented_batches(x, y, batch_size, **kw))
    if shards > 1 and n % batch_size and n % batch_size < shards:
        whole = whole[:-1]
    parts = [list(data.augmented_batches(x, y, batch_size, shard=r, shards=shards, **kw)) for r in range(shards)]
    for k, (wx, wy) in enumerate(whole):
        rows = len(wy)
        for r in range(shards):
            first, last = r * rows // shards, (r + 1) * rows // shards
            np.testing.assert_array_equal(parts[r][k][0], wx[first:last])
            np.testing.assert_array_equal(parts[r][k][1], wy[first:last])
    assert all(len(p) == len(whole) for p in parts)


def test_shuffle_false_keeps_the_data_set_order():
    x, y = distinct_images(20)
    batches = epoch(x, y, batch_size=6, shuffle=False, crop_padding=0, flip=False)
    np.testing.assert_array_equal(np.concatenate([b for b, _ in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), y)


def test_the_batches_do_not_depend_on_the_thread_count():
    x, y = distinct_images(64, 2, 6, 6)
    threads = juanji.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            juanji.set_num_threads(n)
            results.append(epoch(x, y, seed=5, epoch=9, crop_padding=2))
    finally:
        juanji.set_num_threads(threads)
    assert_same_batches(results[1], results[0])
    assert_same_batches(results[2], results[0])


def test_any_input_layout_and_integer_labels():
    x, y = distinct_images(12, 2, 4, 5)
    expected = epoch(x, y, crop_padding=1)
    fortran = np.asfortranarray(x)
    reversed_view = np.ascontiguousarray(x[::-1])[::-1]  # negative strides
    for images in (fortran, reversed_view, juanji.tensor(x)):
        assert_same_batches(epoch(images, y.astype(np.int32), crop_padding=1), expected)


def test_empty_data_set_and_empty_images():
    loader = data.augmented_batches(np.zeros((0, 1, 4, 4), np.float32), np.zeros(0, np.int64), 3,
                                    seed=0, epoch=0)
    assert len(loader) == 0 and list(loader) == []
    batches = epoch(np.zeros((5, 0, 4, 4), np.float32), np.arange(5), batch_size=2)
    assert [b.shape for b, _ in batches] == [(2, 0, 4, 4), (2, 0, 4, 4), (1, 0, 4, 4)]


def test_batches_stay_valid_after_the_loader_is_gone():
    x, y = distinct_images(10)
    loader = data.augmented_batches(x, y, 4, seed=0, epoch=0, crop_padding=0, flip=False)
    kept = next(loader)
    expected = (kept[0].copy(), kept[1].copy())
    del loader
    np.testing.assert_array_equal(kept[0], expected[0])
    np.testing.assert_array_equal(kept[1], expected[1])


# ---- the worker thread ----------------------------------------------------------------------

def test_abandoning_an_epoch_midway():
    x, y = distinct_images(2000, 1, 8, 8)
    expected = epoch(x, y, batch_size=10)
    for taken in (0, 1, 5):
        loader = data.augmented_batches(x, y, 10, seed=0, epoch=0)
        for _ in range(taken):
            next(loader)
        del loader  # the worker is 2 batches ahead, waiting for room: it must stop, not hang
    for x_batch, _ in data.augmented_batches(x, y, 10, seed=0, epoch=0):
        np.testing.assert_array_equal(x_batch, expected[0][0])
        break  # a for loop left early drops its iterator
    # close() ends the iteration; a new loader gives the whole epoch again.
    loader = data.augmented_batches(x, y, 10, seed=0, epoch=0)
    next(loader)
    loader.close()
    loader.close()
    assert list(loader) == []
    assert_same_batches(epoch(x, y, batch_size=10), expected)


def test_several_consumers_share_the_batches():
    x, y = distinct_images(3000, 1, 2, 2)
    loader = data.augmented_batches(x, y, 7, seed=1, epoch=0, prefetch=3)
    seen = [[] for _ in range(4)]

    def consume(into):
        into.extend(int(label) for _, labels in loader for label in labels)

    workers = [threading.Thread(target=consume, args=(s,)) for s in seen]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(sum(seen, [])) == list(range(3000))


def test_an_error_in_the_worker_reaches_the_consumer():
    if not sys.platform.startswith("linux"):
        pytest.skip("caps memory with RLIMIT_AS (Linux)")
    with open("/proc/self/maps") as maps:
        if "libasan" in maps.read():
            pytest.skip("AddressSanitizer's shadow memory does not work under RLIMIT_AS")
    # A 256 MiB image leaves no room under the limit for the batch that holds its crop: the
    # worker's allocation fails, and next() raises that MemoryError.
    code = textwrap.dedent("""
        import resource
        import numpy as np
        from juanji import data
        x = np.ones((1, 1, 8192, 8192), np.float32)
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (size + (96 << 20), resource.RLIM_INFINITY))
        loader = data.augmented_batches(x, np.zeros(1, np.int64), 1, seed=0, epoch=0)
        try:
            next(loader)
            print("made a batch")
        except MemoryError as e:
            print("MemoryError:", e)
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"MemoryError: could not allocate {4 << 26} bytes"), result.stdout


# ---- bad arguments --------------------------------------------------------------------------

X, Y = distinct_images(4)


@pytest.mark.parametrize("args, kw, error, match", [
    ((X, Y, 0), {}, ValueError, "batch_size: must be positive, got 0"),
    ((X, Y, -3), {}, ValueError, "batch_size: must be positive, got -3"),
    ((X, Y, 2), {"crop_padding": -1}, ValueError, "crop_padding: must lie in"),
    ((X, Y, 2), {"crop_padding": 1 << 40}, ValueError, "crop_padding: must lie in"),
    ((X, Y, 2), {"prefetch": 0}, ValueError, "prefetch: must be positive"),
    ((X, Y, 2), {"fill": float("nan")}, ValueError, "fill: must be a finite"),
    ((X, Y, 2), {"fill": 1e300}, ValueError, "fill: must be a finite float32 number, got 1e"),
    ((X, Y, 2), {"seed": -1}, ValueError, "seed"),
    ((X, Y[:3], 2), {}, ValueError,
     r"images and labels: .*images of shape \(4, 1, 5, 6\) and labels of shape \(3,\)"),
    ((X[:, 0], Y, 2), {}, ValueError, r"images: expected images of shape \(N, C, H, W\), "
                                      r"got shape \(4, 5, 6\)"),
    ((X, Y[:, None], 2), {}, ValueError, r"labels: expected shape \(N,\), got \(4, 1\)"),
    ((X.astype(np.float64), Y, 2), {}, TypeError, "images: expected float32 images, got float64"),
    ((X, Y.astype(np.float32), 2), {}, TypeError, "labels: expected integer labels"),
    ((X, Y, True), {}, TypeError, "batch_size"),
    ((X, Y, 2.0), {}, TypeError, "batch_size"),
    ((X, Y, 2), {"shards": 0}, ValueError, "shards: must be positive, got 0"),
    ((X, Y, 2), {"shard": 2, "shards": 2}, ValueError, r"shard: must be in \[0, 2\), got 2"),
    ((X, Y, 2), {"shard": -1, "shards": 2}, ValueError, r"shard: must be in \[0, 2\), got -1"),
    ((X, Y, 2), {"shard": 1 << 62, "shards": (1 << 62) + 1}, ValueError, "shards: 4611686018427387905 shards of "
                                                                         "batches of 2 would leave some shards"),
], ids=["batch_zero", "batch_negative", "padding_negative", "padding_huge", "prefetch", "fill_nan",
        "fill_huge", "seed", "lengths", "three_d", "labels_2d", "float64", "float_labels",
        "bool_batch", "float_batch", "no_shards", "shard_past", "shard_negative", "shards_past_batch"])
def test_bad_arguments_name_themselves(args, kw, error, match):
    with pytest.raises(error, match=match):
        data.augmented_batches(*args, **{"seed": 0, "epoch": 0, **kw})


def test_bad_plan_arguments():
    with pytest.raises(ValueError, match="count: must be non-negative, got -1"):
        data.augmentation_plan(-1, seed=0, epoch=0)
    with pytest.raises(ValueError, match="crop_padding"):
        data.augmentation_plan(3, seed=0, epoch=0, crop_padding=-2)


# ---- juanji train --augment -----------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("none", "none"), ("crop", "crop"), ("flip", "flip"), ("crop,flip", "crop,flip"),
    ("flip,crop", "crop,flip"),
])
def test_augment_option(text, parsed):
    args = cli.build_parser().parse_args(["train", "--augment", text])
    assert args.augment == parsed


def test_augment_defaults_per_model():
    for model in ("convnet", "lenet5"):
        args = cli.build_parser().parse_args(["train", "--model", model])
        cli.resolve_train_defaults(args)
        assert args.augment == cli.TRAIN_DEFAULTS[model].augment == "none"


@pytest.mark.parametrize("text", ["rotate", "crop,crop", "crop,", "", "Crop", "none,flip"])
def test_bad_augment_option_is_one_line(text, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--augment", text])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("juanji train: error: argument --augment: expected none or a comma-")


def test_training_with_augmentation(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plots, "available", lambda: False)  # the figures are tested elsewhere
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "lenet5", "--data", SUBSET_DIR, "--epochs", "1",
                     "--limit", "512", "--augment", "crop,flip", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "augment crop,flip," in printed and "epoch 1/1:" in printed
    log = json.loads((out / "log.json").read_text())
    assert log["args"]["augment"] == "crop,flip"
    assert all(np.isfinite(log["step_losses"]))
