"""ONNX export and import: files that onnx's full check accepts, onnxruntime's outputs equal to
juanji's (the ready-made models, every layer, "same" padding with even kernels, ceil_mode and
count_include_pad pooling, 1-D models, batch 1 and 5), export -> import giving the same outputs,
the forms other exporters write (MatMul + Add, Reshape, auto_pad, Gemm without transB),
models exported from torch, the CLI command, and hostile files."""

import json
import warnings

import numpy as np
import pytest

import juanji
from juanji import cli, models, nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper = onnx.helper
TensorProto = onnx.TensorProto

RTOL, ATOL = 1e-5, 1e-5  # measured: onnxruntime's outputs are within a quarter of this


@pytest.fixture(autouse=True)
def seeded():
    juanji.manual_seed(0)  # every test's initial weights, whatever ran before


def randomize(model, seed=0):
    """Batch norms get non-trivial scales, shifts and running statistics (a fresh model's are
    the identity); weights stay as initialised."""
    rng = np.random.default_rng(seed)
    for p in [*model.parameters(), *model.buffers()]:
        leaf = p.name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            p.data = rng.uniform(0.5, 2.0, p.shape).astype(np.float32)
        elif leaf == "running_mean" or (leaf in ("weight", "bias") and len(p.shape) == 1):
            p.data = (rng.standard_normal(p.shape) * 0.3 + (leaf == "weight")).astype(np.float32)
    return model.eval()


def export(model, tmp_path, input_shape, name="model.onnx"):
    path = tmp_path / name
    model.export_onnx(path, input_shape)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return path


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(path, x):
    sess = session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def inputs(shape, batches=(1, 5), seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *shape)).astype(np.float32) for n in batches]


def check_against_ort(model, tmp_path, shape, batches=(1, 5)):
    """Exports model, compares onnxruntime with juanji at each batch size, imports the file back
    and checks that the imported model gives juanji's outputs exactly. Returns the imported model."""
    path = export(model, tmp_path, shape)
    imported = juanji.import_onnx(path)
    for x in inputs(shape, batches):
        expected = np.asarray(model(x))
        np.testing.assert_allclose(run_ort(path, x), expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(np.asarray(imported(x)), expected)
    return imported


# ---- export: the ready-made models and every layer --------------------------------------------


@pytest.mark.parametrize("name", ["lenet5", "convnet", "resnet"])
def test_ready_made_models_match_onnxruntime(name, tmp_path):
    model = randomize(models.MODELS[name]())
    imported = check_against_ort(model, tmp_path, (1, 28, 28))
    # The same layers come back (convnet's dropout is not in the file).
    assert repr(imported) == (repr(model) if name != "convnet" else repr(models.convnet()).replace(
        "  (9): Dropout(p=0.25)\n", "").replace("(10)", "(9)").replace("(11)", "(10)").replace("(12)", "(11)"))


def test_input_shape_with_or_without_batch_and_a_dynamic_batch(tmp_path):
    model = models.lenet5()
    for shape in [(1, 28, 28), (7, 1, 28, 28)]:
        path = export(model, tmp_path, shape)
        graph = onnx.load(str(path)).graph
        dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["N", 1, 28, 28]
        assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["N", 10]
    proto = onnx.load(str(path))
    assert proto.ir_version == juanji.onnx_io.IR_VERSION == 8
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    with pytest.raises(ValueError, match="does not take inputs of shape"):
        model.export_onnx(tmp_path / "bad.onnx", (3, 28, 28))


def test_a_float64_model_is_written_in_float32(tmp_path):
    model = randomize(models.lenet5()).to("float64")
    path = export(model, tmp_path, (1, 28, 28))
    assert {t.data_type for t in onnx.load(str(path)).graph.initializer} == {TensorProto.FLOAT}
    x = inputs((1, 28, 28), batches=(2,))[0]
    np.testing.assert_allclose(run_ort(path, x), np.asarray(model(x.astype(np.float64))), rtol=1e-4, atol=1e-5)


LAYER_MODELS = {
    # "same" with an even kernel pads one pixel more after than before
    "same-even-kernel": (lambda: nn.Sequential(nn.Conv2d(3, 4, 4, padding="same"), nn.ReLU(),
                                               nn.Conv2d(4, 6, (2, 3), stride=2, padding="same", bias=False),
                                               nn.Conv2d(6, 6, 3, padding="same", dilation=2, groups=3),
                                               nn.Conv2d(6, 2, 3, padding="valid")), (3, 11, 10)),
    "max-ceil": (lambda: nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                                       nn.MaxPool2d(2, ceil_mode=True)), (2, 10, 9)),
    "avg-ceil-include-pad": (lambda: nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
                                                   nn.AvgPool2d((2, 3), stride=(1, 2), padding=(1, 1))),
                             (2, 10, 9)),
    "avg-ceil-exclude-pad": (lambda: nn.Sequential(
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)), (2, 10, 9)),
    "activations": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.LeakyReLU(0.2), nn.Identity(), nn.Sigmoid(),
                                          nn.Dropout(0.5), nn.Tanh(), nn.GlobalAvgPool2d(), nn.Flatten(),
                                          nn.Linear(4, 5, bias=False), nn.Softmax()), (2, 6, 6)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2, ceil_mode=True),
                                     nn.Conv1d(4, 4, 4, padding="same", dilation=2),
                                     nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False),
                                     nn.Conv1d(4, 4, 1, groups=2), nn.AvgPool1d(2), nn.Flatten(),
                                     nn.Linear(12, 3)), (2, 25)),
    "concat-nested": (lambda: nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Concat(nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU()), nn.Identity(),
                  nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(4, 3, 1))),
        nn.Residual(nn.Sequential(nn.BatchNorm2d(9), nn.Conv2d(9, 9, 3, padding=1))),
        nn.Residual(nn.Conv2d(9, 5, 3, stride=2, padding=1), nn.Sequential(nn.Conv2d(9, 5, 1, stride=2))),
        nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(5, 2)), (3, 8, 8)),
}


@pytest.mark.parametrize("name", LAYER_MODELS)
def test_layers_match_onnxruntime(name, tmp_path):
    make, shape = LAYER_MODELS[name]
    check_against_ort(randomize(make()), tmp_path, shape)


def test_same_padding_is_written_as_explicit_asymmetric_pads(tmp_path):
    path = export(nn.Sequential(nn.Conv2d(1, 1, 4, padding="same")), tmp_path, (1, 9, 9))
    (node,) = onnx.load(str(path)).graph.node
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "pads")) == [1, 1, 2, 2]


def test_a_ceil_mode_window_in_the_right_padding_is_dropped_as_torch_does(tmp_path):
    # 7 + 2 padding, kernel 2, stride 2: a fifth window would start in the right padding. juanji
    # (as PyTorch) leaves it out; so does onnxruntime (its output has the same shape).
    # The file says so by its end padding (opset 17's shape inference keeps such a window).
    model = nn.Sequential(nn.MaxPool2d(2, padding=1, ceil_mode=True), nn.AvgPool2d(2, padding=1, ceil_mode=True))
    imported = check_against_ort(model, tmp_path, (1, 7, 7))
    first = onnx.load(str(tmp_path / "model.onnx")).graph.node[0]
    assert {a.name: helper.get_attribute_value(a) for a in first.attribute}["pads"] == [1, 1, 0, 0]
    assert repr(imported) == repr(model)


def test_python_layers_cannot_be_exported(tmp_path):
    class Scale(nn.Layer):
        def forward(self, x):
            return x

        def backward(self, grad_out):
            return grad_out

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Residual(nn.Sequential(nn.ReLU(), Scale())))
    with pytest.raises(ValueError, match=r"layer 1\.body\.1 \(Scale\) has no ONNX equivalent"):
        model.export_onnx(tmp_path / "m.onnx", (1, 5, 5))
    assert not (tmp_path / "m.onnx").exists()


# ---- import: the forms other exporters write ------------------------------------------------


def make_model(nodes, initializers, input_shape, output_shape, opset=17, ir_version=8):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
                              [onnx.numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = ir_version
    return proto


def save(proto, tmp_path, name="g.onnx"):
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


def check_import(proto, tmp_path, shape):
    onnx.checker.check_model(proto, full_check=True)
    path = save(proto, tmp_path)
    model = juanji.import_onnx(path)
    for x in inputs(shape):
        np.testing.assert_allclose(np.asarray(model(x)), run_ort(path, x), rtol=RTOL, atol=ATOL)
    return model


def test_import_exporters_forms(tmp_path):
    rng = np.random.default_rng(2)
    f = np.float32
    weights = {
        "w1": rng.standard_normal((4, 3, 4, 4)).astype(f), "b1": rng.standard_normal(4).astype(f),
        "w2": rng.standard_normal((4, 4, 3, 3)).astype(f),
        "w3": rng.standard_normal((4, 4, 3, 3)).astype(f),
        "shape": np.array([0, -1], np.int64),
        "m": rng.standard_normal((16, 6)).astype(f), "mb": rng.standard_normal(6).astype(f),
        "g": rng.standard_normal((6, 5)).astype(f), "gb": rng.standard_normal((1, 5)).astype(f),
        "zero": np.array(0, f),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Clip", ["c1", "zero", ""], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], auto_pad="VALID"),
        helper.make_node("Conv", ["c2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c3"], ["p3"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Dropout", ["p3"], ["d"]),
        helper.make_node("Reshape", ["d", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "m"], ["mm"]),
        helper.make_node("Add", ["mb", "mm"], ["lin"]),
        helper.make_node("Relu", ["lin"], ["r2"]),
        helper.make_node("Gemm", ["r2", "g", "gb"], ["y"]),  # transB 0: B is (in, out)
    ]
    proto = make_model(nodes, weights, ["batch", 3, 11, 11], ["batch", 5])
    model = check_import(proto, tmp_path, (3, 11, 11))
    assert [layer.type for layer in model.layers] == ["Conv2d", "ReLU", "Conv2d", "Conv2d", "MaxPool2d", "Flatten",
                                                      "Linear", "ReLU", "Linear"]
    assert json.loads(model[0].config_json())["padding"] == "same"


def test_import_residual_and_concat_from_forks(tmp_path):
    rng = np.random.default_rng(3)
    f = np.float32
    w = {f"w{i}": rng.standard_normal((3, 3, 3, 3)).astype(f) * 0.3 for i in range(4)}
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        # a -> conv -> relu -> conv, + a (the identity second, as torch writes it)
        helper.make_node("Conv", ["a", "w0"], ["b1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b1"], ["b2"]),
        helper.make_node("Conv", ["b2", "w1"], ["b3"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b3", "a"], ["s"]),
        # s -> [conv, s, conv] concatenated
        helper.make_node("Conv", ["s", "w2"], ["k1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["s", "w3"], ["k3"], auto_pad="SAME_LOWER", kernel_shape=[3, 3]),
        helper.make_node("MaxPool", ["k3"], ["k4"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["k4"], ["k5"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["k1", "s", "k5"], ["y"], axis=1),
    ]
    proto = make_model(nodes, w, ["N", 3, 6, 6], ["N", 9, 6, 6])
    model = check_import(proto, tmp_path, (3, 6, 6))
    assert [layer.type for layer in model.layers] == ["ReLU", "Residual", "Concat"]
    assert model[1].shortcut is None
    assert [b.type for b in model[2].branches] == ["Conv2d", "Identity", "Sequential"]


# ---- torch ------------------------------------------------------------------------------------


def torch_export(torch, module, x, path, **kwargs):
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, **kwargs)
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
def test_a_model_exported_from_torch_imports(fold, tmp_path):
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.body = tnn.Sequential(tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), tnn.BatchNorm2d(c_out),
                                       tnn.ReLU(), tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                       tnn.BatchNorm2d(c_out))
            self.shortcut = (tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, bias=False), tnn.BatchNorm2d(c_out))
                             if stride != 1 or c_in != c_out else None)

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))

    torch.manual_seed(0)
    net = tnn.Sequential(tnn.Conv2d(1, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(), tnn.MaxPool2d(2),
                         Block(8, 8, 1), Block(8, 16, 2), tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(16, 10))
    for m in net.modules():
        if isinstance(m, tnn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = inputs((1, 16, 16), batches=(3,))[0]
    path = tmp_path / "torch.onnx"
    expected = torch_export(torch, net, x, path, do_constant_folding=fold)
    model = juanji.import_onnx(path)
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=RTOL, atol=ATOL)
    assert repr(model).count("Residual") == 2


def test_a_torch_concat_model_imports(tmp_path):
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class Fire(tnn.Module):  # SqueezeNet's module
        def __init__(self):
            super().__init__()
            self.squeeze = tnn.Conv2d(4, 2, 1)
            self.e1 = tnn.Conv2d(2, 3, 1)
            self.e3 = tnn.Conv2d(2, 3, 3, padding=1)

        def forward(self, x):
            s = torch.relu(self.squeeze(x))
            return torch.cat([torch.relu(self.e1(s)), torch.relu(self.e3(s))], 1)

    torch.manual_seed(1)
    net = tnn.Sequential(tnn.Conv2d(2, 4, 3), Fire(), tnn.AvgPool2d(2, ceil_mode=True), tnn.Flatten(),
                         tnn.Linear(6 * 4 * 4, 3), tnn.Softmax(dim=1))
    x = inputs((2, 9, 9), batches=(2,))[0]
    path = tmp_path / "fire.onnx"
    expected = torch_export(torch, net, x, path)
    model = juanji.import_onnx(path)
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=RTOL, atol=ATOL)
    assert "Concat" in repr(model)


def test_torch_view_batch_minus_one_imports(tmp_path):
    # x.view(x.size(0), -1) with a dynamic batch: Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.Conv2d(1, 2, 3)
            self.fc = tnn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            return self.fc(x.view(x.size(0), -1))

    torch.manual_seed(2)
    x = inputs((1, 6, 6), batches=(4,))[0]
    path = tmp_path / "view.onnx"
    expected = torch_export(torch, Net(), x, path)
    assert "Shape" in {n.op_type for n in onnx.load(str(path)).graph.node}
    model = juanji.import_onnx(path)
    assert [layer.type for layer in model.layers] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=RTOL, atol=ATOL)


# ---- the CLI ----------------------------------------------------------------------------------


def test_cli_export_onnx(tmp_path, capsys):
    model = randomize(models.convnet())
    checkpoint = tmp_path / "model.safetensors"
    model.save(str(checkpoint), metadata={"input_shape": json.dumps([1, 28, 28])})
    out = tmp_path / "model.onnx"
    assert cli.main(["export-onnx", str(checkpoint), str(out)]) == 0
    assert "model.onnx" in capsys.readouterr().out
    x = inputs((1, 28, 28), batches=(2,))[0]
    np.testing.assert_allclose(run_ort(out, x), np.asarray(model(x)), rtol=RTOL, atol=ATOL)

    bare = tmp_path / "bare.safetensors"
    model.save(str(bare))
    assert cli.main(["export-onnx", str(bare), str(out)]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert cli.main(["export-onnx", str(bare), str(out), "--input-shape", "1,28,28"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export-onnx", str(bare), str(out), "--input-shape", "1,x"])
    assert exit_info.value.code == 2
    assert "C,H,W" in capsys.readouterr().err


# ---- bad files --------------------------------------------------------------------------------


def one_node(op, **attributes):
    return make_model([helper.make_node(op, ["x"], ["y"], name="the_node", **attributes)], {}, ["N", 2], ["N", 2])


def test_hostile_files_raise_value_error(tmp_path):
    good = export(models.lenet5(), tmp_path, (1, 28, 28)).read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "random": np.random.default_rng(0).bytes(4096),
        "empty": b"",
        "text": b"not an onnx file\n",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=str(path).replace(".", r"\.")):
            juanji.import_onnx(path)
    with pytest.raises(ValueError, match="no such file"):
        juanji.import_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="not a file"):
        juanji.import_onnx(tmp_path)


@pytest.mark.parametrize("op", ["Sin", "LSTM"])
def test_an_unsupported_node_is_named(op, tmp_path):
    with pytest.raises(ValueError, match=rf"node 'the_node' \({op}\): not supported"):
        juanji.import_onnx(save(one_node(op), tmp_path))


@pytest.mark.parametrize("opset", [5, 99])
def test_an_unsupported_opset_is_an_error(opset, tmp_path):
    with pytest.raises(ValueError, match=f"opset {opset} is not supported"):
        juanji.import_onnx(save(make_model([helper.make_node("Relu", ["x"], ["y"])], {}, ["N", 2], ["N", 2],
                                           opset=opset), tmp_path))


def test_malformed_graphs_raise_value_error(tmp_path):
    f = np.float32
    w = np.ones((2, 2, 3, 3), f)
    cases = {
        # a weight whose data is shorter than its shape says
        "short tensor": make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], {}, ["N", 2, 5, 5],
                                   ["N", 2, 3, 3]),
        "cycle": make_model([helper.make_node("Relu", ["x"], ["y"], name="r1"),
                             helper.make_node("Relu", ["y"], ["y"], name="r2")], {}, ["N", 2], ["N", 2]),
        "branches that do not meet": make_model(
            [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"]),
             helper.make_node("Relu", ["a"], ["y"])], {}, ["N", 2], ["N", 2]),
        "a graph input the walk never reaches": make_model(
            [helper.make_node("Add", ["x", "x2"], ["y"], name="add")], {}, ["N", 2], ["N", 2]),
        "asymmetric pooling pads": make_model(
            [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[0, 0, 1, 1], name="pool")],
            {}, ["N", 2, 5, 5], ["N", 2, 5, 5]),
        "conv without weights": make_model([helper.make_node("Conv", ["x", "missing"], ["y"], name="conv")], {},
                                           ["N", 2, 5, 5], ["N", 2, 3, 3]),
        "bad attribute": make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[0, 0])],
                                    {"w": w}, ["N", 2, 5, 5], ["N", 2, 3, 3]),
        "wrong channels": make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], {"w": w},
                                     ["N", 3, 5, 5], ["N", 2, 3, 3]),
        "no input": make_model([], {}, ["N", 2], ["N", 2]),
        "a shape computed in a cycle": make_model(
            [helper.make_node("Concat", ["s", "c"], ["s"], axis=0, name="shape_cycle"),
             helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")], {"c": np.array([1], np.int64)},
            ["N", 2], ["N", 2]),
        "a Reshape to a computed shape": make_model(
            [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i"], ["g"], name="gather"),
             helper.make_node("Reshape", ["x", "g"], ["y"], name="reshape")], {"i": np.array([0, 5], np.int64)},
            ["N", 2, 3], ["N", 6]),
    }
    short = cases["short tensor"].graph.initializer.add()
    short.CopyFrom(onnx.numpy_helper.from_array(w, "w"))
    short.raw_data = short.raw_data[:10]
    del cases["no input"].graph.input[:]
    external = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], {"w": w},
                          ["N", 2, 5, 5], ["N", 2, 3, 3])
    tensor = external.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")
    cases["external data"] = external
    for name, proto in cases.items():
        path = save(proto, tmp_path, name.replace(" ", "_") + ".onnx")
        with pytest.raises(ValueError, match=str(path).replace(".", r"\.")) as info:
            juanji.import_onnx(path)
        assert "node" in str(info.value) or name == "no input", (name, info.value)
