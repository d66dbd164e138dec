"""Peak memory of training, juanji against PyTorch on the CPU: each (library, network, batch) runs
in a fresh process, which imports only that library, makes its input batch, notes its resident
set, then builds the network and optimiser and runs training steps; the figure is the peak
resident set (the kernel's VmHWM) minus that baseline, so neither library's import counts but
everything training needs does (parameters, gradients, momentum, activations, workspaces, the
code and allocator pages the first steps bring in).

    python bench/training_memory.py [--threads 2] [--steps 20] [--markdown out.md]

PyTorch is a benchmark peer only (`pip install torch==2.13.0`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # compare_torch's networks

# (network, batch): the networks of compare_torch.py's training rows; batch 1 shows what does not
# grow with the batch (parameters, code and allocator pages).
CASES = [("LeNet", 1), ("LeNet", 64), ("LeNet", 256), ("convnet", 1), ("convnet", 64), ("ResNet", 1),
         ("ResNet", 128)]


def resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_juanji(network: str, steps: int, x, y) -> int:
    from compare_torch import lenet_juanji
    from juanji import models, nn, optim

    baseline = resident_kib("VmRSS")
    model = {"LeNet": lenet_juanji, "convnet": models.convnet, "ResNet": models.resnet}[network]()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    for _ in range(steps):
        model.train_step(x, y, loss, opt)
    return baseline


def measure_torch(network: str, steps: int, x, y) -> int:
    import torch

    from compare_torch import convnet_torch, lenet_torch, resnet_torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    baseline = resident_kib("VmRSS")
    model = {"LeNet": lenet_torch, "convnet": convnet_torch, "ResNet": resnet_torch}[network](torch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return baseline


def child(library: str, network: str, batch: int, steps: int, threads: int) -> None:
    import numpy as np

    if library == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import juanji

        juanji.set_num_threads(threads)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    measure = measure_torch if library == "torch" else measure_juanji
    baseline = measure(network, steps, x, y)
    print(resident_kib("VmHWM") - baseline)


def peak_mib(library: str, network: str, batch: int, steps: int, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", library, network, str(batch), "--steps", str(steps),
         "--threads", str(threads)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--child", nargs=3, metavar=("LIBRARY", "NETWORK", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        library, network, batch = args.child
        child(library, network, int(batch), args.steps, args.threads)
        return

    lines = [f"peak resident memory of training above the process's baseline, {args.threads} threads, "
             f"{args.steps} steps, SGD with momentum", "",
             "| network | juanji MiB | torch MiB | torch/juanji |", "|---|---:|---:|---:|"]
    for network, batch in CASES:
        mine = peak_mib("juanji", network, batch, args.steps, args.threads)
        theirs = peak_mib("torch", network, batch, args.steps, args.threads)
        lines.append(f"| {network} b{batch} | {mine:.1f} | {theirs:.1f} | {theirs / mine:.2f}x |")
    from compare_torch import publish

    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
