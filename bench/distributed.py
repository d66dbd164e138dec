"""Data-parallel timings over MPI (issue 21). Run it the same way on 1 and on N ranks:

    mpirun -np 2 python bench/distributed.py            # 2 ranks x 1 thread (Open MPI binds a core each)
    python bench/distributed.py --threads 2             # 1 rank x 2 threads, for comparison

Prints, on rank 0: allreduce time and bandwidth by message size (N > 1 only), then for each model
the time per training step of a global batch (per-rank batch = global / ranks) without
``distribute()`` (each rank alone: the compute), distributed with one bucket (sent after the whole
backward: no overlap) and with buckets of ``--bucket-mib``, the time of the gradients' allreduce
alone and in the step (one bucket - alone), and the fraction of the latter that the buckets hide
behind the backward: (one bucket - buckets) / (one bucket - alone).

Past one machine, by model (``--project``, one rank): the measured forward and backward times of
each model at the per-rank batch, its gradient buckets, and an alpha-beta model of ring allreduce
(2 (p - 1) alpha + 2 (p - 1) / p * bytes / bandwidth per bucket, the buckets sent one after the
other, each once the backward has passed its layers, the backward's time shared among the layers
by their FLOPs) give the communication left exposed after the backward and the weak-scaling
efficiency compute / (compute + exposed) on 8, 64 and 512 machines at 10 and 100 Gb/s, then the
per-rank batch that would reach 90% (the compute grows with the batch, the gradients do not).
"""

from __future__ import annotations

import argparse
import contextlib
import io
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


# The networks projected (name, line rate in bit/s, alpha: per message step, TCP on 10 GbE, RDMA
# on 100 Gb/s), with 90% of the line rate as the payload's bandwidth.
NETWORKS = [("10 Gb/s", 10e9, 25e-6), ("100 Gb/s", 100e9, 5e-6)]
MACHINES = [8, 64, 512]


def ring_allreduce_seconds(nbytes: float, ranks: int, alpha: float, line_rate: float) -> float:
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * nbytes / (0.9 * line_rate / 8)


def layer_rows(model, input_shape) -> list[tuple[int, float]]:
    """(trainable parameters, forward FLOPs) of each top-level layer, from the model's summary."""
    with contextlib.redirect_stdout(io.StringIO()):
        text = model.summary(input_shape)
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            rows.append((int(fields[-2]), float(fields[-1])))
    return rows


def buckets_of(rows, bucket_bytes: float, element_bytes: int = 4) -> list[tuple[float, int]]:
    """(bytes, first layer) of each gradient bucket in the order they go out, as distribute() makes
    them: last layer first, a new bucket where the next parameters would overflow this one (whole
    layers here: a layer's weight and bias go together)."""
    buckets: list[list[float]] = []
    for index in reversed(range(len(rows))):
        size = rows[index][0] * element_bytes
        if not size:
            continue
        if not buckets or buckets[-1][0] + size > bucket_bytes:
            buckets.append([0.0, index])
        buckets[-1][0] += size
        buckets[-1][1] = index
    return [(size, first) for size, first in buckets]


def exposed_seconds(rows, buckets, backward: float, ranks: int, alpha: float, line_rate: float) -> float:
    """Communication still running when the backward ends: each bucket starts once the backward has
    passed its first layer (time shared among layers by FLOPs) and the previous bucket is done."""
    total_flops = sum(flops for _, flops in rows) or 1.0
    busy_until = 0.0
    for nbytes, first in buckets:
        ready = backward * sum(flops for _, flops in rows[first:]) / total_flops
        busy_until = max(busy_until, ready) + ring_allreduce_seconds(nbytes, ranks, alpha, line_rate)
    return max(0.0, busy_until - backward)


def project(name: str, model, x, y, loss, opt, steps: int, bucket_bytes: float) -> None:
    """Prints the projection of one model at the per-rank batch of x (see the module's text)."""
    model.train_step(x, y, loss, opt)
    step = timed(3, train_steps, model, x, y, loss, opt, steps) / steps
    forward = timed(3, lambda: [model.forward(x) for _ in range(steps)]) / steps
    backward = step - forward  # with the update, a small part
    rows = layer_rows(model, x.shape[1:])
    gradient_bytes = 4 * sum(params for params, _ in rows)
    print(f"{name}: per-rank batch {len(x)}: step {step * 1e3:.2f} ms (forward {forward * 1e3:.2f}, "
          f"backward and update {backward * 1e3:.2f}), gradients {gradient_bytes / 1e6:.2f} MB")
    for bucket_mib in sorted({bucket_bytes / 2**20, 0.25}, reverse=True):
        buckets = buckets_of(rows, bucket_mib * 2**20)
        print(f"  buckets of {bucket_mib:g} MiB ({len(buckets)}): efficiency, per-rank batch for 90%")
        for network, line_rate, alpha in NETWORKS:
            cells = []
            for ranks in MACHINES:
                exposed = exposed_seconds(rows, buckets, backward, ranks, alpha, line_rate)
                efficiency = step / (step + exposed)
                scale = 1
                while scale < 1024 and scale * step / (scale * step + exposed_seconds(
                        rows, buckets, scale * backward, ranks, alpha, line_rate)) < 0.9:
                    scale *= 2
                needed = f"{scale * len(x)}" if scale < 1024 else "-"
                cells.append(f"{ranks:>3}: {100 * efficiency:5.1f}% {needed:>6}")
            print(f"    {network:>8} (alpha {alpha * 1e6:.0f} us)  " + "   ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="lenet5,convnet")
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--bucket-mib", type=float, default=25.0)
    parser.add_argument("--sync-batch-norm", action="store_true",
                        help="batch norm with the global batch's statistics (BatchNorm2d(sync=True))")
    parser.add_argument("--project", action="store_true",
                        help="one rank: the alpha-beta projection to 8, 64 and 512 machines")
    args = parser.parse_args()
    distributed.init()
    if args.project and distributed.world_size() > 1:
        raise SystemExit("--project runs on one rank")
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
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.sync = args.sync_batch_norm
        x = rng.standard_normal((per_rank, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, per_rank)
        loss = nn.CrossEntropyLoss()
        opt = optim.SGD(model.parameters(), lr=0.01)
        if args.project:
            project(name, model, x, y, loss, opt, args.steps, args.bucket_mib * 2**20)
            continue
        model.train_step(x, y, loss, opt)  # warm-up: buffers, plan
        alone = timed(3, train_steps, model, x, y, loss, opt, args.steps) / args.steps
        line = f"{name}: global batch {per_rank * world}: step alone {alone * 1e3:.2f} ms"
        if world > 1:
            # One bucket, sent once the whole backward is done: nothing overlaps. The ranks now
            # wait for each other every step, which costs more than the sum on small models.
            model.distribute(bucket_mib=1e6)
            model.train_step(x, y, loss, opt)
            serial = timed(3, train_steps, model, x, y, loss, opt, args.steps) / args.steps
            model.distribute(bucket_mib=args.bucket_mib)
            model.train_step(x, y, loss, opt)
            together = timed(3, train_steps, model, x, y, loss, opt, args.steps) / args.steps
            grads = [np.ones(p.data.size, np.float32) for p in model.parameters() if p.grad is not None]
            flat = np.concatenate(grads)
            reduce = timed(10, distributed.all_reduce, flat)
            # In a step the sum costs more than alone in a loop (its buffers are cold, the caches
            # full of the step's tensors): its cost is what one bucket adds to the step.
            cost = serial - alone
            hidden = (serial - together) / cost if cost > 0 else 0.0
            line += (f", one bucket {serial * 1e3:.2f} ms, buckets of {args.bucket_mib:g} MiB "
                     f"{together * 1e3:.2f} ms; allreduce of {flat.nbytes / 1e6:.2f} MB alone "
                     f"{reduce * 1e3:.2f} ms, in the step {cost * 1e3:.2f} ms, hidden {100 * hidden:.0f}%")
            alone = together
        say(line + f"; {per_rank * world / alone:.0f} img/s")


if __name__ == "__main__":
    main()
