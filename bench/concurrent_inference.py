"""Throughput of inference when several Python threads call at once, juanji against PyTorch on the
CPU: each thread runs its own LeNet-5 (or, with --one-model, all threads call the same one) on
batches of 64 as fast as it can for a few seconds. Every
(library, callers) case runs in a fresh process, so that no OpenMP pool of an earlier case is
still around; rounds alternate the cases and the figures are medians of images/s summed over the
callers. Target: two callers together at least as fast as one caller alone.

    python bench/concurrent_inference.py [--threads 2] [--seconds 3] [--rounds 3] [--one-model]
                                         [--markdown out.md]

PyTorch is a benchmark peer only (`pip install torch==2.13.0`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # compare_torch's networks

BATCH = 64


def run_case(library: str, callers: int, threads: int, seconds: float, one_model: bool) -> float:
    """Images per second of `callers` threads together, measured in this process."""
    import threading
    import time

    import numpy as np

    x = np.random.default_rng(0).random((BATCH, 1, 28, 28), dtype=np.float32)
    if library == "juanji":
        import juanji
        from juanji import models

        juanji.set_num_threads(threads)
        nets = [models.lenet5() for _ in range(1 if one_model else callers)]
        nets *= callers // len(nets)
        calls = [lambda net=net: net(x) for net in nets]
    else:
        import torch

        from compare_torch import lenet_torch

        torch.set_num_threads(threads)
        nets = [lenet_torch(torch).eval() for _ in range(1 if one_model else callers)]
        nets *= callers // len(nets)
        xt = torch.from_numpy(x)

        def infer(net):
            with torch.no_grad():
                net(xt)

        calls = [lambda net=net: infer(net) for net in nets]
    for call in calls:
        for _ in range(5):
            call()
    start_line = threading.Barrier(callers + 1)
    counts = [0] * callers
    stop = [False]

    def caller(i: int) -> None:
        start_line.wait()
        while not stop[0]:
            calls[i]()
            counts[i] += 1

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for w in workers:
        w.start()
    start_line.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop[0] = True
    for w in workers:
        w.join()
    return sum(counts) * BATCH / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one-model", action="store_true", help="all callers call one model")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # library:callers, run in a child process
    args = parser.parse_args()
    if args.case:
        library, callers = args.case.split(":")
        print(json.dumps(run_case(library, int(callers), args.threads, args.seconds, args.one_model)))
        return

    cases = [(library, callers) for callers in (1, 2) for library in ("juanji", "torch")]
    results = {case: [] for case in cases}
    for _ in range(args.rounds):
        for library, callers in cases:
            out = subprocess.run(
                [sys.executable, __file__, "--case", f"{library}:{callers}", "--threads", str(args.threads),
                 "--seconds", str(args.seconds)] + (["--one-model"] if args.one_model else []),
                check=True, capture_output=True, text=True,
            ).stdout
            results[(library, callers)].append(json.loads(out))
    import juanji

    lines = [
        f"LeNet-5 inference, batch {BATCH}, {'one model for all callers' if args.one_model else 'a model per caller'}, "
        f"{args.threads} OpenMP threads per library, {args.rounds} rounds of "
        f"{args.seconds:g} s; {platform.processor() or platform.machine()}, juanji {juanji.__version__}",
        "",
        "| library | callers | images/s (median) | runs | two callers / one |",
        "|---|---|---|---|---|",
    ]
    for library in ("juanji", "torch"):
        one = statistics.median(results[(library, 1)])
        for callers in (1, 2):
            runs = results[(library, callers)]
            median = statistics.median(runs)
            ratio = f"{median / one:.2f}" if callers == 2 else ""
            all_runs = ", ".join(f"{r:,.0f}" for r in runs)
            lines.append(f"| {library} | {callers} | {median:,.0f} | {all_runs} | {ratio} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
