"""ImageNet-size networks exported from torch (random weights), imported with juanji.import_onnx and
timed side by side with onnxruntime's CPU provider in one run, both with the same thread count,
at batch 1 and 8 (medians of alternating rounds). juanji runs twice: the imported model as it comes,
and its frozen copy (model.freeze(), which, as onnxruntime does when it makes a session, lays the
weights out for its kernels once instead of on every call).

    python bench/compare_onnxruntime.py [--threads 2] [--repeat 6] [--rounds 2] [--batches 1,8]
                                        [--only resnet18,resnet50,vgg11,squeezenet] [--markdown out.md]

Needs torch (to write the ONNX files; a benchmark peer only: pip install torch==2.13.0), onnx and
onnxruntime (pip install '.[onnx]' onnxruntime). Each network is checked first: juanji's outputs
must match onnxruntime's (the largest difference is printed), and the frozen copy's the model's,
bit for bit.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings

import numpy as np

import juanji


def networks(torch):
    """name -> a torch module of ImageNet size (3x224x224 in, 1000 classes out)."""
    tnn = torch.nn

    def conv_bn(c_in, c_out, k, stride=1, relu=True):
        layers = [tnn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), tnn.BatchNorm2d(c_out)]
        return layers + [tnn.ReLU(inplace=True)] if relu else layers

    class Basic(tnn.Module):  # ResNet-18/34
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.body = tnn.Sequential(*conv_bn(c_in, c_out, 3, stride), *conv_bn(c_out, c_out, 3, relu=False))
            self.shortcut = (tnn.Sequential(*conv_bn(c_in, c_out, 1, stride, relu=False))
                             if stride != 1 or c_in != c_out else tnn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    class Bottleneck(tnn.Module):  # ResNet-50 (v1.5: the stride on the 3x3)
        def __init__(self, c_in, width, stride):
            super().__init__()
            c_out = 4 * width
            self.body = tnn.Sequential(*conv_bn(c_in, width, 1), *conv_bn(width, width, 3, stride),
                                       *conv_bn(width, c_out, 1, relu=False))
            self.shortcut = (tnn.Sequential(*conv_bn(c_in, c_out, 1, stride, relu=False))
                             if stride != 1 or c_in != c_out else tnn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    def resnet(block, counts, widths, expansion):
        layers = [*conv_bn(3, 64, 7, 2), tnn.MaxPool2d(3, 2, 1)]
        c_in = 64
        for i, (count, width) in enumerate(zip(counts, widths)):
            for j in range(count):
                layers.append(block(c_in, width, 2 if j == 0 and i > 0 else 1))
                c_in = width * expansion
        return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(c_in, 1000))

    def vgg11():
        layers, c_in = [], 3
        for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
            if v == "M":
                layers.append(tnn.MaxPool2d(2))
            else:
                layers += [tnn.Conv2d(c_in, v, 3, padding=1), tnn.ReLU(inplace=True)]
                c_in = v
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(512 * 7 * 7, 4096), tnn.ReLU(inplace=True),
                              tnn.Linear(4096, 4096), tnn.ReLU(inplace=True), tnn.Linear(4096, 1000))

    class Fire(tnn.Module):
        def __init__(self, c_in, squeeze, expand):
            super().__init__()
            self.squeeze = tnn.Sequential(tnn.Conv2d(c_in, squeeze, 1), tnn.ReLU(inplace=True))
            self.e1 = tnn.Sequential(tnn.Conv2d(squeeze, expand, 1), tnn.ReLU(inplace=True))
            self.e3 = tnn.Sequential(tnn.Conv2d(squeeze, expand, 3, padding=1), tnn.ReLU(inplace=True))

        def forward(self, x):
            s = self.squeeze(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    def squeezenet():  # SqueezeNet 1.1
        pool = lambda: tnn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        return tnn.Sequential(tnn.Conv2d(3, 64, 3, 2), tnn.ReLU(inplace=True), pool(), Fire(64, 16, 64),
                              Fire(128, 16, 64), pool(), Fire(128, 32, 128), Fire(256, 32, 128), pool(),
                              Fire(256, 48, 192), Fire(384, 48, 192), Fire(384, 64, 256), Fire(512, 64, 256),
                              tnn.Conv2d(512, 1000, 1), tnn.ReLU(inplace=True), tnn.AdaptiveAvgPool2d(1),
                              tnn.Flatten())

    return {
        "resnet18": lambda: resnet(Basic, [2, 2, 2, 2], [64, 128, 256, 512], 1),
        "resnet50": lambda: resnet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], 4),
        "vgg11": vgg11,
        "squeezenet": squeezenet,
    }


def export(torch, module, path: str) -> None:
    module.eval()
    for m in module.modules():  # batch norm that is not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 3, 224, 224),), path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})


def seconds(fn, count: int) -> list[float]:
    # The other library's idle threads spin for a while after its last call (onnxruntime's pool,
    # GNU OpenMP's team): let them go to sleep first, so that neither times the other's spinning
    # (SqueezeNet at batch 1 ran at 12.8 or 24.5 ms by what the run before it was).
    time.sleep(0.2)
    fn()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=6, help="timed calls per case and library")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds the calls are split into")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--only", default="resnet18,resnet50,vgg11,squeezenet")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    juanji.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    batches = [int(b) for b in args.batches.split(",")]
    per_round = max(1, args.repeat // args.rounds)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            path = os.path.join(tmp, f"{name}.onnx")
            export(torch, networks(torch)[name](), path)
            model = juanji.import_onnx(path)
            frozen = model.freeze()
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            for batch in batches:
                x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
                ours, theirs = np.asarray(model(x)), session.run(None, {"input": x})[0]
                if not np.array_equal(np.asarray(frozen(x)), ours):
                    raise SystemExit(f"{name}: the frozen copy's outputs differ from the model's")
                difference = float(np.max(np.abs(ours - theirs)))
                scale = float(np.max(np.abs(theirs)))
                model(x), frozen(x), session.run(None, {"input": x})  # warm-up
                times_j, times_f, times_o = [], [], []
                for _ in range(args.rounds):
                    times_j += seconds(lambda m=model, x=x: m(x), per_round)
                    times_f += seconds(lambda m=frozen, x=x: m(x), per_round)
                    times_o += seconds(lambda s=session, x=x: s.run(None, {"input": x}), per_round)
                j, f, o = (statistics.median(t) for t in (times_j, times_f, times_o))
                rows.append((name, batch, 1e3 * j, 1e3 * f, 1e3 * o, difference))
                print(f"{name:<11} batch {batch}: juanji {1e3 * j:8.1f} ms, frozen {1e3 * f:8.1f} ms, onnxruntime "
                      f"{1e3 * o:8.1f} ms, speed {o / j:.2f}x, frozen {o / f:.2f}x, max |difference| "
                      f"{difference:.1e} (outputs up to {scale:.1f})", flush=True)

    header = (f"{platform.processor() or platform.machine()}, {args.threads} threads each: juanji "
              f"{juanji.__version__} ({juanji.simd_level()}), onnxruntime {ort.__version__}, torch "
              f"{torch.__version__} (export only); median of {per_round * args.rounds} calls each, in "
              f"{args.rounds} alternating rounds")
    lines = [header, "",
             "| network | batch | juanji ms | frozen ms | onnxruntime ms | speed | frozen speed | max abs diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {b} | {j:.1f} | {f:.1f} | {o:.1f} | {o / j:.2f}x | {o / f:.2f}x | {d:.1e} |"
              for n, b, j, f, o, d in rows]
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
