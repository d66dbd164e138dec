"""Side-by-side timings of juanji and PyTorch in one run (medians): on the CPU with the same thread
count, or with --device cuda on the GPU against torch's CUDA path (cuDNN).

    python bench/compare_torch.py [--device cpu|cuda] [--threads 2] [--repeat 15] [--rounds 3]
                                  [--markdown out.md] [--only conv,depthwise,pool,residual,train]
                                  [--tf32] [--precision bf16]

PyTorch is a benchmark peer only: install it with `pip install torch==2.13.0` (a CUDA build of it
for --device cuda). On the GPU both sides keep their data on the device, each timed sample runs
several calls and then waits for the device (juanji.cuda_synchronize, torch.cuda.synchronize),
and cuDNN runs in full float32 unless --tf32 lets it use TF32 tensor cores (juanji computes in
float32). A juanji training step reads its loss back to the host; the torch step does not.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

import juanji
from juanji import models, nn, optim

# (name, N, C, H, W, K, R, stride, padding) — the cases of the CPU-speed issue.
CONV_CASES = [
    ("lenet_c1", 64, 1, 28, 28, 6, 5, 1, 2),
    ("lenet_c2", 64, 6, 14, 14, 16, 5, 1, 0),
    ("cifar_c1", 64, 3, 32, 32, 32, 3, 1, 1),
    ("cifar_c2", 64, 32, 16, 16, 64, 3, 1, 1),
    ("res_64", 8, 64, 56, 56, 64, 3, 1, 1),
    ("res_128", 8, 128, 28, 28, 128, 3, 1, 1),
    ("res_256", 8, 256, 14, 14, 256, 3, 1, 1),
    ("pw", 8, 256, 56, 56, 64, 1, 1, 0),
    ("stem", 4, 3, 224, 224, 64, 7, 2, 3),
]

# (name, N, C, HxW, stride) — depthwise 3x3, padding 1, one filter per channel: MobileNet-style
# layers at Fashion-MNIST's scale (28, 14; batch 64) and at ImageNet's (56, 28; batch 8), at
# stride 1 and 2, from 32 to 256 channels, and 7x7 planes narrower than a vector.
DEPTHWISE_CASES = [
    ("dw_32x28", 64, 32, 28, 1),
    ("dw_64x14", 64, 64, 14, 1),
    ("dw_64x28_s2", 64, 64, 28, 2),
    ("dw_128x7", 64, 128, 7, 1),
    ("dw_128x56", 8, 128, 56, 1),
    ("dw_256x28_s2", 8, 256, 28, 2),
]


def sample_seconds(fn, count: int, warmup: int = 2, sync=None, calls: int = 1) -> list:
    """Seconds per call of fn in `count` samples; each sample makes `calls` calls, then sync() if
    given (a GPU's queue must drain before the clock stops)."""
    # juanji and torch each keep an OpenMP pool whose idle threads spin for a while after a
    # parallel region; let the other library's threads go to sleep before timing.
    time.sleep(0.3)
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if sync:
            sync()
        times.append((time.perf_counter() - start) / calls)
    return times


class Device:
    """Where the comparison runs: how arrays become each library's tensors and how calls are
    timed there."""

    def __init__(self, name: str, torch, repeat: int, rounds: int):
        self.name, self.torch, self.repeat, self.rounds = name, torch, repeat, rounds
        self.cuda = name == "cuda"

    def juanji(self, a: np.ndarray, dtype=None):
        return juanji.tensor(a, dtype=dtype, device="cuda") if self.cuda else juanji.from_numpy(a)

    def torch_tensor(self, a: np.ndarray):
        t = self.torch.from_numpy(a)
        return t.cuda() if self.cuda else t

    def time_pair(self, juanji_fn, torch_fn, warmup: int = 2, calls: int = 0):
        """Median seconds per call of juanji_fn and of torch_fn, sampled in alternating rounds so
        that a busy spell on a shared machine falls on both sides rather than on one; each sample
        times `calls` calls (default 10 on a GPU, 1 on the CPU)."""
        calls = calls or (10 if self.cuda else 1)
        per_round = max(1, self.repeat // self.rounds)
        juanji_times, torch_times = [], []
        for _ in range(self.rounds):
            juanji_times += sample_seconds(juanji_fn, per_round, warmup,
                                           juanji.cuda_synchronize if self.cuda else None, calls)
            torch_times += sample_seconds(torch_fn, per_round, warmup,
                                          self.torch.cuda.synchronize if self.cuda else None, calls)
        return statistics.median(juanji_times), statistics.median(torch_times)


def conv_rows(dev: Device):
    torch = dev.torch
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    rows = []
    for name, N, C, H, W, K, R, s, p in CONV_CASES:
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        w = rng.standard_normal((K, C, R, R), dtype=np.float32) * 0.1
        b = rng.standard_normal(K, dtype=np.float32)
        P = (H + 2 * p - R) // s + 1
        Q = (W + 2 * p - R) // s + 1
        dy = rng.standard_normal((N, K, P, Q), dtype=np.float32)
        flops = 2.0 * N * K * P * Q * C * R * R
        xt, wt, bt, dyt = (dev.torch_tensor(a) for a in (x, w, b, dy))
        xj, wj, bj, dyj = (dev.juanji(a) for a in (x, w, b, dy))
        jf, tf = dev.time_pair(lambda: juanji.conv2d(xj, wj, bj, stride=s, padding=p),
                               lambda: F.conv2d(xt, wt, bt, stride=s, padding=p))
        jb, tb = dev.time_pair(
            lambda: juanji.conv2d_backward(dyj, xj, wj, stride=s, padding=p),
            lambda: torch.ops.aten.convolution_backward(
                dyt, xt, wt, [K], [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, True, True]
            ),
        )
        rows.append((f"conv {name} fwd", jf, tf, f"{flops / jf / 1e9:.0f} GF/s", f"{flops / tf / 1e9:.0f} GF/s"))
        rows.append((f"conv {name} bwd", jb, tb,
                     f"{2 * flops / jb / 1e9:.0f} GF/s", f"{2 * flops / tb / 1e9:.0f} GF/s"))
    return rows


def depthwise_rows(dev: Device):
    torch = dev.torch
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    rows = []
    for name, N, C, H, s in DEPTHWISE_CASES:
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        w = rng.standard_normal((C, 1, 3, 3), dtype=np.float32) * 0.3
        b = rng.standard_normal(C, dtype=np.float32)
        P = (H + 2 - 3) // s + 1
        dy = rng.standard_normal((N, C, P, P), dtype=np.float32)
        xt, wt, bt, dyt = (dev.torch_tensor(a) for a in (x, w, b, dy))
        xj, wj, bj, dyj = (dev.juanji(a) for a in (x, w, b, dy))
        jf, tf = dev.time_pair(lambda: juanji.conv2d(xj, wj, bj, stride=s, padding=1, groups=C),
                               lambda: F.conv2d(xt, wt, bt, stride=s, padding=1, groups=C))
        jb, tb = dev.time_pair(
            lambda: juanji.conv2d_backward(dyj, xj, wj, stride=s, padding=1, groups=C),
            lambda: torch.ops.aten.convolution_backward(
                dyt, xt, wt, [C], [s, s], [1, 1], [1, 1], False, [0, 0], C, [True, True, True]
            ),
        )
        rows.append((f"depthwise {name} fwd", jf, tf, f"{N / jf:.0f} img/s", f"{N / tf:.0f} img/s"))
        rows.append((f"depthwise {name} bwd", jb, tb, f"{N / jb:.0f} img/s", f"{N / tb:.0f} img/s"))
    return rows


def pool_rows(dev: Device):
    F = dev.torch.nn.functional
    x_host = np.random.default_rng(1).standard_normal((8, 64, 56, 56), dtype=np.float32)
    dy_host = np.ones((8, 64, 28, 28), np.float32)
    xt, dyt = dev.torch_tensor(x_host), dev.torch_tensor(dy_host)
    x, dy = dev.juanji(x_host), dev.juanji(dy_host)
    nbytes = x_host.nbytes + dy_host.nbytes
    rows = []
    for kind in ("max", "avg"):
        jfwd = getattr(juanji, f"{kind}_pool2d")
        jbwd = getattr(juanji, f"{kind}_pool2d_backward")
        tfwd = getattr(F, f"{kind}_pool2d")

        def torch_fwd_bwd():
            xg = xt.detach().requires_grad_()
            tfwd(xg, 2, 2).backward(dyt)

        jt, tt = dev.time_pair(lambda: jfwd(x, 2, 2), lambda: tfwd(xt, 2, 2))
        jtb, ttb = dev.time_pair(lambda: (jfwd(x, 2, 2), jbwd(dy, x, 2, 2)), torch_fwd_bwd)
        rows.append((f"{kind}_pool2d 2x2/2 fwd", jt, tt,
                     f"{nbytes / 2 / jt / 1e9:.1f} GB/s", f"{nbytes / 2 / tt / 1e9:.1f} GB/s"))
        rows.append((f"{kind}_pool2d fwd+bwd", jtb, ttb,
                     f"{2 * nbytes / jtb / 1e9:.1f} GB/s", f"{2 * nbytes / ttb / 1e9:.1f} GB/s"))
    return rows


def lenet_juanji():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def lenet_torch(torch):
    t = torch.nn
    return t.Sequential(
        t.Conv2d(1, 6, 5, padding=2), t.ReLU(), t.MaxPool2d(2),
        t.Conv2d(6, 16, 5), t.ReLU(), t.MaxPool2d(2), t.Flatten(),
        t.Linear(400, 120), t.ReLU(), t.Linear(120, 84), t.ReLU(), t.Linear(84, 10),
    )


def convnet_torch(torch):
    """The same network as juanji.models.convnet() (the CLI's main job)."""
    t = torch.nn
    return t.Sequential(
        t.Conv2d(1, 32, 3, padding=1), t.BatchNorm2d(32), t.ReLU(), t.MaxPool2d(2),
        t.Conv2d(32, 64, 3, padding=1), t.BatchNorm2d(64), t.ReLU(), t.MaxPool2d(2), t.Flatten(),
        t.Dropout(0.25), t.Linear(64 * 7 * 7, 128), t.ReLU(), t.Linear(128, 10),
    )


def resnet_torch(torch):
    """The same network as juanji.models.resnet(): basic blocks with projection shortcuts where the
    shape changes, the ReLU after each sum."""
    t = torch.nn

    class Residual(t.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    def block(c_in, c_out, stride=1):
        body = t.Sequential(t.Conv2d(c_in, c_out, 3, stride, 1, bias=False), t.BatchNorm2d(c_out), t.ReLU(),
                            t.Conv2d(c_out, c_out, 3, 1, 1, bias=False), t.BatchNorm2d(c_out))
        shortcut = None
        if stride != 1 or c_in != c_out:
            shortcut = t.Sequential(t.Conv2d(c_in, c_out, 1, stride, bias=False), t.BatchNorm2d(c_out))
        return Residual(body, shortcut)

    return t.Sequential(
        t.Conv2d(1, 32, 3, padding=1, bias=False), t.BatchNorm2d(32), t.ReLU(), t.MaxPool2d(2),
        block(32, 32), t.ReLU(), block(32, 64, 2), t.ReLU(), block(64, 128, 2), t.ReLU(),
        t.AdaptiveAvgPool2d(1), t.Flatten(), t.Linear(128, 10),
    )


def residual_rows(dev: Device):
    """A residual block (the basic block of the ResNet's second stage, 64 channels at 7x7 from 32 at
    14x14 with a projection) forward and backward in training mode, batch 128."""
    torch = dev.torch
    rng = np.random.default_rng(4)
    x = rng.standard_normal((128, 32, 14, 14), dtype=np.float32)
    model = nn.Sequential(models.basic_block(32, 64, stride=2), nn.ReLU()).to(dev.name)
    tmodel = resnet_torch(torch)[6:8].to(dev.name)
    xj, xt = dev.juanji(x), dev.torch_tensor(x).requires_grad_()
    g = rng.standard_normal((128, 64, 7, 7), dtype=np.float32)
    gj, gt = dev.juanji(g), dev.torch_tensor(g)

    def juanji_step():
        model.forward(xj, training=True)
        model.backward(gj)

    def torch_step():
        xt.grad = None
        tmodel(xt).backward(gt)

    jt, tt = dev.time_pair(juanji_step, torch_step, warmup=5)
    return [("residual block fwd+bwd b128", jt, tt, f"{128 / jt:.0f} img/s", f"{128 / tt:.0f} img/s")]


def train_step_row(dev: Device, name, model, tmodel, batch, rng):
    torch = dev.torch
    x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    model.to(dev.name)
    tmodel.to(dev.name)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
    xt, yt = dev.torch_tensor(x), dev.torch_tensor(y)
    xj, yj = dev.juanji(x), (dev.juanji(y, dtype="int64") if dev.cuda else y)

    def torch_step():
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(xt), yt).backward()
        topt.step()

    jt, tt = dev.time_pair(lambda: model.train_step(xj, yj, loss, opt), torch_step, warmup=5)
    return (f"{name} train step b{batch}", jt, tt, f"{batch / jt:.0f} img/s", f"{batch / tt:.0f} img/s")


# The convolutions of the mixed-precision issue: the large 3x3 and 1x1 cases.
BF16_CONV_CASES = ["cifar_c2", "res_64", "res_128", "res_256", "pw"]


def precision_rows(dev: Device):
    """Each case in float32 and in bf16 on both sides: juanji's Layer.set_precision("bf16")
    against torch.autocast("cpu", dtype=torch.bfloat16). Conv rows time a layer's forward and
    backward (input and weight gradients), train rows a whole SGD step."""
    torch = dev.torch
    rng = np.random.default_rng(4)
    rows = []
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    for name, N, C, H, W, K, R, s, p in CONV_CASES:
        if name not in BF16_CONV_CASES:
            continue
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        P, Q = (H + 2 * p - R) // s + 1, (W + 2 * p - R) // s + 1
        dy = rng.standard_normal((N, K, P, Q), dtype=np.float32)
        layer = nn.Conv2d(C, K, R, stride=s, padding=p)
        tlayer = torch.nn.Conv2d(C, K, R, stride=s, padding=p)
        xt, dyt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)
        flops = 3 * 2.0 * N * K * P * Q * C * R * R
        for precision in ("fp32", "bf16"):
            layer.set_precision(precision)

            def juanji_step():
                layer.forward(x)
                layer.backward(dy)

            def torch_step():
                if precision == "bf16":
                    with autocast():
                        y = tlayer(xt)
                    y.backward(dyt.to(y.dtype))
                else:
                    tlayer(xt).backward(dyt)

            jt, tt = dev.time_pair(juanji_step, torch_step)
            rows.append((f"conv {name} fwd+bwd {precision}", jt, tt, f"{flops / jt / 1e9:.0f} GF/s",
                         f"{flops / tt / 1e9:.0f} GF/s"))
    for name, make, make_torch, batch in (("LeNet", lenet_juanji, lenet_torch, 64),
                                          ("convnet", models.convnet, convnet_torch, 64),
                                          ("ResNet", models.resnet, resnet_torch, 128)):
        model, tmodel = make(), make_torch(torch)
        x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, batch)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        opt, topt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9), torch.optim.SGD(
            tmodel.parameters(), lr=0.01, momentum=0.9)
        loss = nn.CrossEntropyLoss()
        for precision in ("fp32", "bf16"):
            model.set_precision(precision)

            def torch_step():
                topt.zero_grad()
                if precision == "bf16":
                    with autocast():
                        out = tmodel(xt)
                    torch.nn.functional.cross_entropy(out.float(), yt).backward()
                else:
                    torch.nn.functional.cross_entropy(tmodel(xt), yt).backward()
                topt.step()

            jt, tt = dev.time_pair(lambda: model.train_step(x, y, loss, opt), torch_step, warmup=5)
            rows.append((f"{name} train step b{batch} {precision}", jt, tt, f"{batch / jt:.0f} img/s",
                         f"{batch / tt:.0f} img/s"))
    return rows


def train_rows(dev: Device):
    torch = dev.torch
    rows = []
    rng = np.random.default_rng(2)
    for batch in (64, 256):
        rows.append(train_step_row(dev, "LeNet", lenet_juanji(), lenet_torch(torch), batch, rng))
    # The CLI's main job trains this at batch 64.
    rows.append(train_step_row(dev, "convnet", models.convnet(), convnet_torch(torch), 64, rng))
    # `juanji train --model resnet` trains this at batch 128.
    rows.append(train_step_row(dev, "ResNet", models.resnet(), resnet_torch(torch), 128, rng))
    x = rng.standard_normal((256, 1, 28, 28), dtype=np.float32)
    model, tmodel = lenet_juanji().to(dev.name), lenet_torch(torch).to(dev.name).eval()
    xj, xt = dev.juanji(x), dev.torch_tensor(x)

    def torch_inference():
        with torch.no_grad():
            return tmodel(xt)

    jt, tt = dev.time_pair(lambda: model(xj), torch_inference, warmup=5)
    rows.append(("LeNet inference b256", jt, tt, f"{256 / jt:.0f} img/s", f"{256 / tt:.0f} img/s"))
    return rows


def latency_rows(dev: Device):
    """One image at a time, the embedding case: the convnet and LeNet in eval mode at batch 1."""
    torch = dev.torch
    x = np.random.default_rng(4).standard_normal((1, 1, 28, 28), dtype=np.float32)
    rows = []
    for name, model, tmodel in (("convnet", models.convnet(), convnet_torch(torch)),
                                ("LeNet", lenet_juanji(), lenet_torch(torch))):
        model, tmodel = model.to(dev.name), tmodel.to(dev.name).eval()
        model.eval()
        xj, xt = dev.juanji(x), dev.torch_tensor(x)

        def torch_inference():
            with torch.no_grad():
                return tmodel(xt)

        jt, tt = dev.time_pair(lambda: model(xj), torch_inference, warmup=20, calls=20)
        rows.append((f"{name} inference b1", jt, tt, f"{jt * 1e6:.0f} us", f"{tt * 1e6:.0f} us"))
    return rows


def publish(lines, markdown=None) -> None:
    """Prints a table's lines, and writes them to the file `markdown` when one is named."""
    text = "\n".join(lines)
    print(text)
    if markdown:
        with open(markdown, "w") as f:
            f.write(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15, help="timed samples per case and library")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of juanji and torch samples the repeats are split into")
    parser.add_argument("--only", default="conv,depthwise,pool,residual,train,latency",
                        help="comma-separated: conv, depthwise, pool, residual, train, latency")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--tf32", action="store_true", help="let cuDNN use TF32 tensor cores (cuda only)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: instead of the groups, the large 3x3 and 1x1 convolutions' layer steps and "
                             "the training steps in float32 and in bf16 (juanji's set_precision, torch's autocast)")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not (torch.cuda.is_available() and juanji.cuda_device_count() > 0):
        parser.error(f"--device cuda needs a GPU visible to both torch ({torch.cuda.is_available()}) "
                     f"and juanji ({juanji.cuda_device_count()} devices, CUDA compiled: {juanji.cuda_compiled()})")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.set_num_threads(args.threads)
    juanji.set_num_threads(args.threads)
    dev = Device(args.device, torch, args.repeat, args.rounds)
    # Bring both libraries' thread pools (or the GPU) and the clocks up before the first timed case.
    warm_host = np.random.default_rng(3).standard_normal((512, 512), dtype=np.float32)
    warm_j, warm_t = dev.juanji(warm_host), dev.torch_tensor(warm_host)
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline:
        juanji.linear(warm_j, warm_j)
        warm_t @ warm_t
    groups = {"conv": conv_rows, "depthwise": depthwise_rows, "pool": pool_rows, "residual": residual_rows,
              "train": train_rows, "latency": latency_rows}
    rows = []
    if args.precision == "bf16":
        if dev.cuda:
            parser.error("--precision bf16 compares on the CPU")
        rows = precision_rows(dev)
    else:
        for name in args.only.split(","):
            rows += groups[name](dev)

    per_round = max(1, args.repeat // args.rounds)
    samples = f"median of {per_round * args.rounds} samples each, in {args.rounds} alternating rounds"
    if dev.cuda:
        header = (
            f"{torch.cuda.get_device_name()}, juanji {juanji.__version__} (CUDA), torch {torch.__version__} "
            f"(cuDNN {torch.backends.cudnn.version()}, TF32 {'on' if args.tf32 else 'off'}), {samples}"
        )
    else:
        header = (
            f"{platform.processor() or platform.machine()}, {args.threads} threads, juanji {juanji.__version__} "
            f"(SIMD {juanji.simd_level()}), torch {torch.__version__}, {samples}"
        )
    lines = [header, "", "| case | juanji ms | torch ms | juanji/torch speed | juanji rate | torch rate |",
             "|---|---:|---:|---:|---:|---:|"]
    for case, jt, tt, jr, tr in rows:
        lines.append(f"| {case} | {jt * 1e3:.3f} | {tt * 1e3:.3f} | {tt / jt:.2f}x | {jr} | {tr} |")
    if args.precision == "bf16":
        times = {case: (jt, tt) for case, jt, tt, _, _ in rows}
        lines += ["", "| case | juanji bf16 vs fp32 | torch bf16 vs fp32 |", "|---|---:|---:|"]
        for case in times:
            if case.endswith(" bf16"):
                base = case[:-len(" bf16")]
                (jb, tb), (jf, tf) = times[case], times[base + " fp32"]
                lines.append(f"| {base} | {jf / jb:.2f}x | {tf / tb:.2f}x |")
    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
