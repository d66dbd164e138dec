"""Data-parallel timings over MPI (issue 21). Run it the same way on 1 and on N ranks:

    mpirun -np 2 python bench/distributed.py            # 2 ranks x 1 thread (Open MPI binds a core each)
    python bench/distributed.py --threads 2             # 1 rank x 2 threads, for comparison

Prints, on rank 0: allreduce time and bandwidth by message size (N > 1 only), then for each model
the time per training step of a global batch (per-rank batch = global / ranks) with
``distribute()``, without it (each rank alone: the compute), the time of the gradients'
allreduce alone, and the fraction of that allreduce hidden behind the backward:
1 - (distributed - alone) / allreduce.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import juanji
from juanji import distributed, nn, optim
from juanji.models import MODELS


def timed(repeats: int, fn, *fn_args) -> float:
    """Median seconds of fn(*fn_args) over repeats, every rank starting each together, averaged
    over the ranks."""
    times = []
    for _ in range(repeats):
        distributed.barrier()
        start = time.perf_counter()
        fn(*fn_args)
        times.append(time.perf_counter() - start)
    t = np.array([float(np.median(times))])
    return float(distributed.all_reduce(t, op="mean")[0])


def train_steps(model, x, y, loss, opt, steps: int) -> None:
    for _ in range(steps):
        model.train_step(x, y, loss, opt)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="lenet5,convnet")
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--bucket-mib", type=float, default=25.0)
    args = parser.parse_args()
    distributed.init()
    if args.threads:
        juanji.set_num_threads(args.threads)
    rank, world = distributed.rank(), distributed.world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"{world} rank(s) x {juanji.get_num_threads()} thread(s); {distributed.library_version()}")

    if world > 1:
        say("allreduce (float32, sum):  bytes      time        algorithm bandwidth")
        for size in [1 << k for k in range(12, 27, 2)]:
            buffer = np.ones(size // 4, np.float32)
            seconds = timed(10, distributed.all_reduce, buffer)
            say(f"{size:>30,}  {seconds * 1e6:9.1f} us  {size / seconds / 1e9:6.2f} GB/s")

    per_rank = args.global_batch // world
    rng = np.random.default_rng(rank)
    for name in args.models.split(","):
        juanji.manual_seed(0)
        model = MODELS[name]()
        x = rng.standard_normal((per_rank, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, per_rank)
        loss = nn.CrossEntropyLoss()
        opt = optim.SGD(model.parameters(), lr=0.01)
        model.train_step(x, y, loss, opt)  # warm-up: buffers, plan
        alone = timed(3, train_steps, model, x, y, loss, opt, args.steps) / args.steps
        line = f"{name}: global batch {per_rank * world}: step alone {alone * 1e3:.2f} ms"
        if world > 1:
            model.distribute(bucket_mib=args.bucket_mib)
            model.train_step(x, y, loss, opt)
            together = timed(3, train_steps, model, x, y, loss, opt, args.steps) / args.steps
            grads = [np.ones(p.data.size, np.float32) for p in model.parameters() if p.grad is not None]
            flat = np.concatenate(grads)
            reduce = timed(10, distributed.all_reduce, flat)
            hidden = 1 - (together - alone) / reduce if reduce > 0 else 0.0
            line += (f", distributed {together * 1e3:.2f} ms, allreduce of {flat.nbytes / 1e6:.2f} MB "
                     f"{reduce * 1e3:.2f} ms, hidden {100 * hidden:.0f}%")
            alone = together
        say(line + f"; {per_rank * world / alone:.0f} img/s")


if __name__ == "__main__":
    main()
