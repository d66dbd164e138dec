"""
Mini-batches with random crops and flips, made on a background thread
"""
from __future__ import annotations
import numpy
import numpy.typing
import typing
__all__: list[str] = ['BatchLoader', 'epoch_plan']
class BatchLoader:
    """
    One epoch of (images, labels) mini-batches as NumPy arrays, made by a C++ thread.

    images: (N, C, H, W) float32; labels: (N,) integers. Batches of batch_size in a shuffled
    order (shuffle=False: the data set's), the last one smaller. With crop_padding = p > 0 each
    image is padded by p pixels of `fill` on every side and an H x W window of it taken at a random
    offset (torchvision's RandomCrop); with flip it is mirrored left-right with probability 1/2.
    The batches depend only on (seed, epoch) and the arguments. A worker thread makes up to
    `prefetch` batches ahead, so making the next batch overlaps the training step; waiting for one
    releases the GIL. Dropping the iterator or close() stops the worker; an error in it is raised
    by the next() that would have returned the batch. Data parallelism: shard=r, shards=w make only
    slice r of w of each batch (rows r*n//w to (r+1)*n//w of its n), leaving out a last batch of
    fewer than w rows.
    """
    def __init__(self, images: typing.Any, labels: typing.Any, batch_size: typing.Any, *, shuffle: bool = True, crop_padding: typing.Any = 0, flip: bool = False, fill: typing.SupportsFloat | typing.SupportsIndex = 0.0, seed: typing.Any = 0, epoch: typing.Any = 0, prefetch: typing.Any = 2, shard: typing.Any = 0, shards: typing.Any = 1) -> None:
        ...
    def __iter__(self) -> BatchLoader:
        ...
    def __len__(self) -> int:
        """
        The number of batches in the epoch.
        """
    def __next__(self) -> tuple[numpy.ndarray, numpy.ndarray]:
        ...
    def close(self) -> None:
        """
        Stops the worker thread and drops the batches made ahead; iteration then ends.
        """
def epoch_plan(count: typing.Any, *, shuffle: bool = True, crop_padding: typing.Any = 0, flip: bool = False, seed: typing.Any = 0, epoch: typing.Any = 0) -> tuple[numpy.typing.NDArray[numpy.int64], numpy.typing.NDArray[numpy.int64], numpy.typing.NDArray[numpy.int64], numpy.typing.NDArray[numpy.bool]]:
    """
    The random choices BatchLoader makes for a data set of `count` images, as arrays
    with one entry per position in the epoch: (order, crop_top, crop_left, flipped), where order
    names the image at each position, (crop_top, crop_left) is the corner of its crop in the padded
    image (each in [0, 2 * crop_padding]) and flipped says whether the crop is mirrored.
    """
