"""ONNX export and import: ``Sequential.export_onnx(path, input_shape)`` and ``import_onnx(path)``.

Export writes one ONNX node per layer (a ``Residual`` becomes its branches and an ``Add``, a
``Concat`` its branches and a ``Concat``), opset 17, IR version 8, a dynamic batch dimension
``N``. Import walks the graph from its input: a chain of nodes is a ``Sequential``, a tensor
that feeds two paths meeting at an ``Add`` is a ``Residual`` (one path may be empty: the
identity shortcut), paths meeting at a ``Concat`` on the channels are a ``Concat``. Weights come
from the initializers (and ``Constant`` nodes). Anything else raises ``ValueError`` naming the
file and the first node juanji cannot take, with its op type.

The ``onnx`` package is needed for both (``pip install 'juanji[onnx]'``); it is imported on
first use, so juanji itself does not depend on it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _core
from ._core import nn

OPSET = 17  # what export writes
IR_VERSION = 8  # the IR version of opset 17 (ONNX 1.12); every onnxruntime since 1.12 reads it
MIN_IMPORT_OPSET = 7
MAX_IMPORT_OPSET = 22  # the newest default-domain opset whose ops import checks the semantics of
# A file larger than this is refused unread: protobuf cannot parse more than 2 GiB in one message.
MAX_FILE_BYTES = 2**31 - 1

SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Identity")
IMPORTED_OPS = ("Conv", "Gemm", "MatMul (+ Add)", "MaxPool", "AveragePool", "GlobalAveragePool",
                "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip (as a ReLU)",
                "Softmax", "Flatten", "Reshape (to (N, -1), also from Shape)", "Add (of two branches)",
                "Concat (on the channels)", "Identity", "Dropout")


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export and import need the onnx package: pip install 'juanji[onnx]' "
                          "(or pip install onnx)") from e
    return onnx


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def _per_dim(values: Any, dims: int) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    return values * dims if len(values) == 1 else values


def _join(path: str, part: Any) -> str:
    """A layer's place as its parameters' names give it: "3.body.0"."""
    return f"{path}.{part}" if path else str(part)


def _compact(values: list[int]) -> int | tuple[int, ...]:
    """One number where every dimension has it (as a model written by hand says it)."""
    return values[0] if len(set(values)) == 1 else tuple(values)


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" (ONNX's SAME_UPPER, juanji's "same"): out = ceil(size / stride), the
    odd pixel of padding after."""
    out = (size - 1) // stride + 1
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pool_out(size: int, kernel: int, stride: int, begin: int, end: int, ceil: bool, drop: bool = True) -> int:
    """A pooling's output size. With ceil_mode a last window that would start in the end padding
    is dropped (drop): PyTorch's rule, which juanji and onnxruntime follow and ONNX's shape
    inference from opset 22 on; earlier opsets' inference keeps it (drop False)."""
    span = size + begin + end - kernel
    if span < 0:
        return 0
    out = (-(-span // stride) if ceil else span // stride) + 1
    if drop and ceil and (out - 1) * stride >= size + begin:
        out -= 1
    return out


def _same_divisors(out: int, size: int, kernel: int, stride: int, begin: int, end: int, other_end: int) -> bool:
    """Whether average pooling that counts the padding divides every window by the same count
    with `end` and with `other_end` pixels of end padding (only the last window can differ)."""
    return end == other_end or (out - 1) * stride - begin + kernel <= size + min(end, other_end)


def _onnx_pool_pads(sizes, kernel, stride, pad, ceil: bool, counts_padding: bool) -> tuple[int, list[int]]:
    """ceil_mode and end pads for ONNX that give juanji's windows under both rules of _pool_out,
    so that every runtime and opset 17's shape inference agree: where juanji's ceil_mode drops a
    window, the end padding shrinks until the window is gone from the arithmetic too."""
    target = [_pool_out(n, k, s, p, p, ceil) for n, k, s, p in zip(sizes, kernel, stride, pad)]
    for flag in (ceil, not ceil):
        ends = []
        for n, k, s, p, out in zip(sizes, kernel, stride, pad, target):
            candidates = [p] + [p - r if flag else p + r for r in range(1, s)]
            ends.append(next((e for e in candidates if e >= 0
                              and _pool_out(n, k, s, p, e, flag) == out == _pool_out(n, k, s, p, e, flag, drop=False)
                              and (not counts_padding or _same_divisors(out, n, k, s, p, e, p))), None))
        if None not in ends:
            return int(flag), ends
    raise ValueError(f"export_onnx: pooling of {tuple(sizes)} with kernel {kernel}, stride {stride}, padding {pad} "
                     "and ceil_mode has no ONNX equivalent that every runtime reads alike")


def _sample_shape(model, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of one input without the batch: input_shape as given if the model takes
    (1, *input_shape), else input_shape[1:] (as Sequential.summary decides)."""
    shape = tuple(input_shape)
    if not shape or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0
                            for n in shape):
        raise ValueError(f"export_onnx: input_shape must be positive integers, got {input_shape!r}")
    shape = tuple(int(n) for n in shape)
    try:
        model.output_shape((1, *shape))
        return shape
    except ValueError as first:
        if len(shape) >= 2:
            try:
                model.output_shape((1, *shape[1:]))
                return shape[1:]
            except ValueError:
                pass
        raise ValueError(f"export_onnx: the model does not take inputs of shape {shape}: {first}") from None


class _Exporter:
    def __init__(self, onnx) -> None:
        self.onnx = onnx
        self.nodes: list = []
        self.initializers: list = []

    def tensor(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes) -> str:
        output = f"{name}:{op}" if name else op
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=name or op, **attributes))
        return output

    def arrays(self, layer) -> dict[str, tuple[str, np.ndarray]]:
        """The layer's parameters and buffers by their last name: (full name, values)."""
        return {p.name.rsplit(".", 1)[-1]: (p.name, np.array(p.data)) for p in [*layer.parameters(), *layer.buffers()]}

    def layer(self, layer, x: str, shape: tuple[int, ...], path: str) -> str:
        """Adds the nodes of `layer` (named `path`, input tensor x of shape `shape` at batch 1)
        and returns the name of its output tensor."""
        kind = type(layer)
        config = json.loads(layer.config_json())
        if kind is nn.Sequential:
            for i, inner in enumerate(layer.layers):
                x_next = self.layer(inner, x, shape, _join(path, i))
                shape = tuple(inner.output_shape(shape))
                x = x_next
            return x
        if kind is nn.Residual:
            body = self.layer(layer.body, x, shape, _join(path, "body"))
            shortcut = x if layer.shortcut is None else self.layer(layer.shortcut, x, shape, _join(path, "shortcut"))
            return self.node("Add", [body, shortcut], path)
        if kind is nn.Concat:
            outputs = [self.layer(b, x, shape, _join(path, i)) for i, b in enumerate(layer.branches)]
            return self.node("Concat", outputs, path, axis=1)
        if kind in (nn.Conv1d, nn.Conv2d):
            dims = 1 if kind is nn.Conv1d else 2
            kernel = _per_dim(config["kernel_size"], dims)
            stride = _per_dim(config["stride"], dims)
            dilation = _per_dim(config["dilation"], dims)
            padding = config["padding"]
            if padding == "same":
                begin, end = zip(*(_same_pads(shape[2 + d], kernel[d], stride[d], dilation[d]) for d in range(dims)))
                pads = [*begin, *end]
            elif padding == "valid":
                pads = [0] * (2 * dims)
            else:
                pads = _per_dim(padding, dims) * 2
            arrays = self.arrays(layer)
            inputs = [x, self.tensor(*arrays["weight"])]
            if "bias" in arrays:
                inputs.append(self.tensor(*arrays["bias"]))
            return self.node("Conv", inputs, path, kernel_shape=kernel, strides=stride, pads=pads,
                             dilations=dilation, group=config["groups"])
        if kind is nn.Linear:
            arrays = self.arrays(layer)
            inputs = [x, self.tensor(*arrays["weight"])]
            if "bias" in arrays:
                inputs.append(self.tensor(*arrays["bias"]))
            return self.node("Gemm", inputs, path, transB=1)
        if kind in (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d):
            dims = 1 if kind in (nn.MaxPool1d, nn.AvgPool1d) else 2
            kernel = _per_dim(config["kernel_size"], dims)
            stride = kernel if config["stride"] is None else _per_dim(config["stride"], dims)
            pad = _per_dim(config["padding"], dims)
            counts_padding = kind in (nn.AvgPool1d, nn.AvgPool2d) and config["count_include_pad"]
            ceil, ends = _onnx_pool_pads(shape[2:], kernel, stride, pad, config["ceil_mode"], counts_padding)
            attributes = dict(kernel_shape=kernel, strides=stride, pads=[*pad, *ends], ceil_mode=ceil)
            if kind in (nn.MaxPool1d, nn.MaxPool2d):
                return self.node("MaxPool", [x], path, **attributes)
            return self.node("AveragePool", [x], path, count_include_pad=int(config["count_include_pad"]),
                             **attributes)
        if kind is nn.GlobalAvgPool2d:
            return self.node("GlobalAveragePool", [x], path)
        if kind is nn.BatchNorm2d:
            arrays = self.arrays(layer)
            inputs = [x] + [self.tensor(*arrays[name]) for name in ("weight", "bias", "running_mean", "running_var")]
            return self.node("BatchNormalization", inputs, path, epsilon=float(config["eps"]))
        if kind is nn.ReLU:
            return self.node("Relu", [x], path)
        if kind is nn.LeakyReLU:
            return self.node("LeakyRelu", [x], path, alpha=float(config["negative_slope"]))
        if kind is nn.Sigmoid:
            return self.node("Sigmoid", [x], path)
        if kind is nn.Tanh:
            return self.node("Tanh", [x], path)
        if kind is nn.Softmax:  # juanji's softmax is over the last axis
            return self.node("Softmax", [x], path, axis=len(shape) - 1)
        if kind is nn.Flatten:
            return self.node("Flatten", [x], path, axis=1)
        if kind is nn.Identity:
            return self.node("Identity", [x], path)
        if kind is nn.Dropout:  # the identity at inference
            return x
        where = f"layer {path} ({layer.type})" if path else f"a {layer.type} layer"
        raise ValueError(f"export_onnx: {where} has no ONNX equivalent: juanji exports its built-in layers, "
                         "not layers written in Python")


def export_onnx(model, path: str | os.PathLike, input_shape: Sequence[int]) -> None:
    """Writes `model` as an ONNX file (opset 17, IR version 8) for inputs of `input_shape`, with
    or without the batch dimension (the file's batch dimension is dynamic, named "N"). Spatial
    sizes are fixed by input_shape ("same" padding is written as the explicit pads it gives
    there). Batch norm is written in inference form (running statistics) and dropout is left out.
    The file is float32 whatever the model's dtype (ONNX runtimes compute CNNs in float32). Layers
    written in Python raise ValueError, as does an input_shape the model cannot take."""
    onnx = _onnx()
    if not isinstance(model, nn.Layer):
        raise TypeError(f"export_onnx: expected a juanji layer or Sequential, got {type(model).__name__}")
    for p in [*model.parameters(), *model.buffers()]:
        if p.device != "cpu":
            raise ValueError(f"export_onnx: parameter {p.name} is on {p.device}: move the model to the CPU first "
                             "(model.to('cpu'))")
    sample = _sample_shape(model, input_shape)
    exporter = _Exporter(onnx)
    output = exporter.layer(model, "input", (1, *sample), "")
    if output == "input":  # a model of only identities and dropouts
        output = exporter.node("Identity", ["input"], "output")
    for node in exporter.nodes:  # the last node's output is the graph's, named "output"
        node.output[:] = ["output" if name == output else name for name in node.output]
        node.input[:] = ["output" if name == output else name for name in node.input]
    out_shape = tuple(model.output_shape((1, *sample)))
    elem = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        exporter.nodes, "juanji",
        [onnx.helper.make_tensor_value_info("input", elem, ["N", *sample])],
        [onnx.helper.make_tensor_value_info("output", elem, ["N", *out_shape[1:]])],
        exporter.initializers)
    proto = onnx.helper.make_model(graph, producer_name="juanji", producer_version=_core.version(),
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    onnx.save(proto, os.fspath(path))


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------
class _GraphError(ValueError):
    """A ValueError that already names the file and the node."""


class _Node:
    """A graph node with its index, for messages and bookkeeping."""

    def __init__(self, index: int, proto) -> None:
        self.index = index
        self.proto = proto
        self.op = proto.op_type
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        self.label = f"node {proto.name!r} ({proto.op_type})" if proto.name else \
            f"node #{index} ({proto.op_type}, output {self.outputs[0] if self.outputs else '?'!r})"


class _Importer:
    def __init__(self, onnx, proto, path: str) -> None:
        self.onnx = onnx
        self.path = path
        graph = proto.graph
        self.constants: dict[str, Any] = {t.name: t for t in graph.initializer}
        self.nodes: list[_Node] = []
        for i, node_proto in enumerate(graph.node):
            node = _Node(i, node_proto)
            if node.op == "Constant" and node_proto.domain in ("", "ai.onnx"):
                if len(node.outputs) != 1:
                    raise self.error(node, "a Constant node must have one output")
                self.constants[node.outputs[0]] = node
            else:
                self.nodes.append(node)
        self.producers = {name: node for node in self.nodes for name in node.outputs if name}
        self.side: dict[str, bool] = {}
        self.shape_values: dict[str, list | None] = {}
        self.shapes: dict[str, tuple | None] = {}  # the shape of each tensor the walk has passed
        self.consumers: dict[str, list[_Node]] = {}
        for node in self.nodes:
            if self.is_side_node(node):
                continue
            for name in node.inputs:
                if name and name not in self.constants:
                    self.consumers.setdefault(name, []).append(node)
        self.visited: set[int] = set()

    # -- shape arithmetic: x.view(x.size(0), -1) as torch writes it ---------------------------
    def is_side_node(self, node: _Node) -> bool:
        """Whether node computes a shape (Shape, and the ops on its result), not data."""
        if node.op == "Shape":
            return True
        variable = self.variable_inputs(node, with_side=True)
        return node.op in SHAPE_OPS and bool(variable) and all(self.is_side(name) for name in variable)

    def is_side(self, name: str) -> bool:
        if name not in self.side:
            self.side[name] = False  # a cycle of shape ops is no shape
            producer = self.producers.get(name)
            self.side[name] = producer is not None and self.is_side_node(producer)
        return self.side[name]

    def variable_inputs(self, node: _Node, with_side: bool = False) -> list[str]:
        """Node's inputs that are neither constants nor (unless with_side) computed shapes."""
        return [name for name in node.inputs
                if name and name not in self.constants and (with_side or not self.is_side(name))]

    def shape_value(self, user: _Node, name: str) -> list:
        """The integers a shape computation gives, "N" standing for the batch size."""
        if name in self.constants:
            value = self.constant(user, name, "shape")
            if value.dtype.kind not in "iu" or value.ndim > 1:
                raise self.unsupported(user, f"its shape input {name!r} is not integers")
            return [int(n) for n in value.reshape(-1)]
        node = self.producers.get(name)
        if node is None or not self.is_side(name):
            raise self.unsupported(user, f"its shape input {name!r} is computed in the graph")
        if name in self.shape_values:
            if self.shape_values[name] is None:
                raise self.error(node, "the graph has a cycle")
            return list(self.shape_values[name])
        self.shape_values[name] = None
        self.shape_values[name] = self.compute_shape_value(node)
        return list(self.shape_values[name])

    def compute_shape_value(self, node: _Node) -> list:
        try:
            if node.op == "Shape":
                attrs = self.attributes(node, {"start": 0, "end": 2**62})
                shape = self.shapes.get(node.inputs[0])
                if shape is None:
                    raise self.unsupported(node, f"the shape of {node.inputs[0]!r}, whose size is unknown")
                return ["N", *shape[1:]][attrs["start"]:attrs["end"]]
            if node.op == "Gather":
                (axis,) = self.attributes(node, {"axis": 0}).values()
                data = self.shape_value(node, node.inputs[0])
                index = self.constant(node, node.inputs[1], "indices")
                if axis != 0 or index.dtype.kind not in "iu" or index.ndim > 1:
                    raise self.unsupported(node, "a Gather other than of positions in a shape")
                return [data[int(i)] for i in index.reshape(-1)]
            if node.op == "Concat":
                self.attributes(node, {"axis": 0})
                return [n for name in node.inputs if name for n in self.shape_value(node, name)]
            self.attributes(node, {"axes": [], "to": 0})  # Unsqueeze, Squeeze, Cast, Identity
            return self.shape_value(node, node.inputs[0])
        except IndexError:
            raise self.unsupported(node, "an index past the shape's end") from None

    # -- messages and attributes -------------------------------------------------------------
    def error(self, node: _Node | None, message: str) -> ValueError:
        where = f"{self.path}: {node.label}" if node is not None else self.path
        return _GraphError(f"{where}: {message}")

    def unsupported(self, node: _Node, why: str = "") -> ValueError:
        return self.error(node, (why + "; " if why else "") + "not supported by juanji's ONNX import, which "
                          f"takes {', '.join(IMPORTED_OPS)}")

    def attributes(self, node: _Node, known: dict[str, Any]) -> dict[str, Any]:
        """The node's attributes over the defaults in `known`; an attribute not in `known`
        (or of the wrong kind) is an error."""
        values = dict(known)
        for a in node.proto.attribute:
            if a.name not in known:
                raise self.unsupported(node, f"attribute {a.name!r}")
            value = self.onnx.helper.get_attribute_value(a)
            default = known[a.name]
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            expected = (list if isinstance(default, list) else float if isinstance(default, float)
                        else str if isinstance(default, str) else int)
            if expected is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, expected) or isinstance(value, bool):
                raise self.error(node, f"attribute {a.name!r} is {value!r}, expected a {expected.__name__}")
            if expected is list:
                value = [int(v) for v in value]
            if expected is float:  # stored as float32: 1e-5 reads back as 9.99999974e-06
                value = float(str(np.float32(value)))
            values[a.name] = value
        return values

    def constant(self, node: _Node, name: str, what: str) -> np.ndarray:
        """The value of a constant input (an initializer or a Constant node's output)."""
        if name not in self.constants:
            raise self.unsupported(node, f"its {what} {name!r} is computed in the graph, not a constant")
        source = self.constants[name]
        if isinstance(source, _Node):
            attributes = source.proto.attribute
            if len(attributes) != 1 or attributes[0].name not in ("value", "value_float", "value_floats",
                                                                   "value_int", "value_ints"):
                raise self.unsupported(source, "a Constant other than a tensor or numbers")
            value = self.onnx.helper.get_attribute_value(attributes[0])
            if attributes[0].name != "value":
                return np.array(value, np.float32 if "float" in attributes[0].name else np.int64)
            source = value
        if self.onnx.external_data_helper.uses_external_data(source):
            raise self.error(node, f"tensor {name!r} is stored outside the file (external data), which "
                             "juanji's ONNX import does not read")
        try:
            return self.onnx.numpy_helper.to_array(source)
        except Exception as e:  # a malformed tensor: wrong sizes, unknown data type
            raise self.error(node, f"tensor {name!r} cannot be read: {e}") from None

    def weight(self, node: _Node, index: int, what: str, rank: int | None = None) -> np.ndarray | None:
        """Input `index` of node as a float32 array (None where the input is absent)."""
        if index >= len(node.inputs) or not node.inputs[index]:
            return None
        array = self.constant(node, node.inputs[index], what)
        if array.dtype.kind != "f":
            raise self.error(node, f"{what} {node.inputs[index]!r} is {array.dtype}, expected floating point")
        if rank is not None and array.ndim != rank:
            raise self.error(node, f"{what} {node.inputs[index]!r} has shape {array.shape}, expected {rank} "
                             "dimensions")
        if not np.all(np.isfinite(array)):
            raise self.error(node, f"{what} {node.inputs[index]!r} holds NaN or infinity")
        return np.ascontiguousarray(array, np.float32)

    def only_output(self, node: _Node) -> str:
        """Node's first output; it must be the only one that is used."""
        if not node.outputs or not node.outputs[0]:
            raise self.error(node, "has no output")
        for extra in node.outputs[1:]:
            if extra and (extra in self.consumers or extra in self.graph_outputs):
                raise self.unsupported(node, f"its output {extra!r} is used")
        return node.outputs[0]

    # -- walking the graph --------------------------------------------------------------------
    def is_merge(self, node: _Node) -> bool:
        variable = self.variable_inputs(node)
        return node.op in ("Add", "Concat") and len(variable) >= 2

    def walk(self, tensor: str, shape: tuple | None, first: _Node | None = None, top: bool = False):
        """Converts the chain of nodes from `tensor` (through `first` if given) until it reaches a
        node that merges branches (returned) or, at the top, the graph's output.
        Returns (layers, last tensor, its shape, merging node or None)."""
        layers = []
        node = first
        self.shapes[tensor] = shape
        while True:
            if node is None:
                self.shapes[tensor] = shape
                edges = self.consumers.get(tensor, [])
                if top and tensor == self.output:
                    if edges:
                        raise self.unsupported(edges[0], f"it reads the graph's output {tensor!r}")
                    return layers, tensor, shape, None
                if not edges and not top:  # a branch that ends without meeting the others
                    return layers, tensor, shape, None
                if not edges:
                    raise self.error(None, f"tensor {tensor!r} is used by no node and is not the graph's output")
                if len(edges) > 1:
                    layer, tensor, shape = self.fork(tensor, shape, edges)
                    layers.append(layer)
                    continue
                node = edges[0]
            if self.is_merge(node):
                return layers, tensor, shape, node
            if self.variable_inputs(node) != [tensor] or node.inputs[0] != tensor:
                raise self.unsupported(node, f"its inputs {list(node.inputs)} are not {tensor!r} and constants")
            if node.index in self.visited:
                raise self.error(node, "the graph has a cycle")
            self.visited.add(node.index)
            try:
                new_layers, tensor = self.convert(node, tensor, shape)
            except _GraphError:
                raise
            except (ValueError, TypeError, OverflowError) as e:  # juanji's layers refusing the arguments
                raise self.error(node, str(e)) from None
            for layer in new_layers:
                try:
                    shape = tuple(layer.output_shape(shape)) if shape is not None else None
                except ValueError as e:
                    raise self.error(node, f"juanji's {layer.type} cannot take its input: {e}") from None
                layers.append(layer)
            node = None

    def fork(self, tensor: str, shape: tuple | None, edges: list[_Node]):
        """Tensor feeds several nodes: their paths must meet at one Add (a Residual) or Concat."""
        branches = [self.walk(tensor, shape, first=edge) for edge in edges]
        merge = branches[0][3]
        if merge is None or any(b[3] is not merge for b in branches):
            raise self.error(edges[0], f"tensor {tensor!r} feeds {len(edges)} nodes whose paths do not meet "
                             "at one Add or Concat: juanji's import takes chains, residual blocks and "
                             "concatenations of branches only")
        if merge.index in self.visited:
            raise self.error(merge, "the graph has a cycle")
        self.visited.add(merge.index)
        variable = self.variable_inputs(merge)
        if len(variable) != len(branches):
            raise self.unsupported(merge, f"it adds or concatenates {len(variable)} tensors of which "
                                   f"{len(branches)} come from {tensor!r}")
        ordered = []
        remaining = list(branches)
        for name in variable:
            match = next((b for b in remaining if b[1] == name), None)
            if match is None:
                raise self.unsupported(merge, f"its input {name!r} does not come from {tensor!r}")
            remaining.remove(match)
            ordered.append(match)

        def branch_layer(layers):
            if not layers:
                return nn.Identity()
            return layers[0] if len(layers) == 1 else nn.Sequential(*layers)

        output = self.only_output(merge)
        if merge.op == "Add":
            if len(ordered) != 2 or len(merge.inputs) != 2:
                raise self.unsupported(merge, "an Add of more than two branches")
            first, second = ordered
            if not first[0] and second[0]:
                first, second = second, first
            layer = nn.Residual(branch_layer(first[0]), branch_layer(second[0]) if second[0] else None)
        else:
            (axis,) = self.attributes(merge, {"axis": 1}).values()
            rank = len(shape) if shape is not None else None
            if not (axis == 1 or (rank is not None and axis == 1 - rank)):
                raise self.unsupported(merge, f"a Concat on axis {axis} (juanji concatenates channels, axis 1)")
            if len(variable) != len(merge.inputs):
                raise self.unsupported(merge, "a Concat with constant inputs")
            layer = nn.Concat(*(branch_layer(b[0]) for b in ordered))
        try:
            shape = tuple(layer.output_shape(shape)) if shape is not None else None
        except ValueError as e:
            raise self.error(merge, f"its branches do not fit together: {e}") from None
        return layer, output, shape

    # -- one node -----------------------------------------------------------------------------
    def spatial_pads(self, node: _Node, auto_pad: str, pads: list[int], kernel: list[int], strides: list[int],
                     dilations: list[int], shape: tuple | None) -> list[int]:
        """Explicit pads (begins then ends) from auto_pad/pads, for the input shape where needed."""
        dims = len(kernel)
        if auto_pad in ("NOTSET", ""):
            pads = pads or [0] * (2 * dims)
            if len(pads) != 2 * dims or min(pads) < 0:
                raise self.error(node, f"pads {pads} for a {dims}-d kernel")
            return pads
        if auto_pad == "VALID":
            return [0] * (2 * dims)
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            raise self.unsupported(node, f"auto_pad {auto_pad!r}")
        if shape is None:
            raise self.unsupported(node, f"auto_pad {auto_pad} on an input of unknown size")
        same = [_same_pads(shape[2 + d], kernel[d], strides[d], dilations[d]) for d in range(dims)]
        if auto_pad == "SAME_LOWER":
            same = [(after, before) for before, after in same]
        return [p[0] for p in same] + [p[1] for p in same]

    def spatial(self, node: _Node, shape: tuple | None, dims: int, kernel: list[int], attrs: dict):
        strides = attrs["strides"] or [1] * dims
        dilations = attrs.get("dilations") or [1] * dims
        if len(kernel) != dims or len(strides) != dims or len(dilations) != dims:
            raise self.error(node, f"kernel_shape {kernel}, strides {strides}, dilations {dilations} for a "
                             f"{dims}-d input")
        if min(kernel) < 1 or min(strides) < 1 or min(dilations) < 1:
            raise self.error(node, f"kernel_shape {kernel}, strides {strides}, dilations {dilations} must "
                             "be positive")
        if shape is not None and len(shape) != dims + 2:
            raise self.error(node, f"a {dims}-d kernel on an input of shape {shape}")
        pads = self.spatial_pads(node, attrs["auto_pad"], attrs["pads"], kernel, strides, dilations, shape)
        return strides, dilations, pads[:dims], pads[dims:]

    def convert(self, node: _Node, x: str, shape: tuple | None) -> tuple[list, str]:
        """The juanji layers (none, one or two) that compute node, and the tensor after them."""
        if node.proto.domain not in ("", "ai.onnx"):
            raise self.unsupported(node, f"domain {node.proto.domain!r}")
        op = node.op
        rank = len(shape) if shape is not None else None
        if op == "Conv":
            attrs = self.attributes(node, {"auto_pad": "NOTSET", "dilations": [], "group": 1,
                                           "kernel_shape": [], "pads": [], "strides": []})
            w = self.weight(node, 1, "weight")
            if w is None or w.ndim not in (3, 4):
                raise self.unsupported(node, "a convolution other than 1-D or 2-D")
            dims = w.ndim - 2
            kernel = attrs["kernel_shape"] or list(w.shape[2:])
            if kernel != list(w.shape[2:]):
                raise self.error(node, f"kernel_shape {kernel} does not match the weight's shape {w.shape}")
            strides, dilations, begin, end = self.spatial(node, shape, dims, kernel, attrs)
            group = attrs["group"]
            if begin == end:
                padding: Any = _compact(begin)
            elif shape is not None and [*begin, *end] == self.spatial_pads(
                    node, "SAME_UPPER", [], kernel, strides, dilations, shape):
                padding = "same"  # juanji's "same" pads the odd pixel after, as these pads do
            else:
                raise self.unsupported(node, f"pads {[*begin, *end]}: juanji pads convolutions evenly, "
                                       "or as 'same' does (the odd pixel after)")
            b = self.weight(node, 2, "bias", rank=1)
            if group < 1 or w.shape[0] % group:
                raise self.error(node, f"group {group} does not divide the weight's {w.shape[0]} filters")
            layer_class = nn.Conv1d if dims == 1 else nn.Conv2d
            layer = layer_class(w.shape[1] * group, w.shape[0], _compact(kernel), stride=_compact(strides),
                                padding=padding, dilation=_compact(dilations), groups=group, bias=b is not None)
            self.load(node, layer, weight=w, bias=b)
            return [layer], self.only_output(node)
        if op in ("Gemm", "MatMul"):
            return self.linear(node, shape)
        if op in ("MaxPool", "AveragePool"):
            known = {"auto_pad": "NOTSET", "ceil_mode": 0, "kernel_shape": [], "pads": [], "strides": []}
            known.update({"dilations": [], "storage_order": 0} if op == "MaxPool" else {"count_include_pad": 0})
            if op == "AveragePool" and self.opset >= 19:
                known["dilations"] = []
            attrs = self.attributes(node, known)
            kernel = attrs["kernel_shape"]
            dims = len(kernel)
            if dims not in (1, 2):
                raise self.unsupported(node, f"pooling over {dims} dimensions")
            strides, dilations, begin, end = self.spatial(node, shape, dims, kernel, attrs)
            if dilations != [1] * dims:
                raise self.unsupported(node, f"dilations {dilations}")
            flag = bool(attrs["ceil_mode"])
            ceil = flag
            if begin != end:  # fine where juanji's windows (with begin both sides) are the same
                counts_padding = op == "AveragePool" and attrs["count_include_pad"]
                if shape is None:
                    raise self.unsupported(node, f"pads {[*begin, *end]} on an input of unknown size")
                wanted = [_pool_out(n, k, s, b, e, flag)
                          for n, k, s, b, e in zip(shape[2:], kernel, strides, begin, end)]
                ceil = next((c for c in (flag, not flag) if all(
                    _pool_out(n, k, s, b, b, c) == out and (not counts_padding or _same_divisors(out, n, k, s, b, e, b))
                    for n, k, s, b, e, out in zip(shape[2:], kernel, strides, begin, end, wanted))), None)
                if ceil is None:
                    raise self.unsupported(node, f"pads {[*begin, *end]}: juanji pads pooling evenly")
            arguments = dict(kernel_size=_compact(kernel), stride=None if strides == kernel else _compact(strides),
                             padding=_compact(begin), ceil_mode=ceil)
            if op == "MaxPool":
                layer = (nn.MaxPool1d if dims == 1 else nn.MaxPool2d)(**arguments)
            else:
                layer = (nn.AvgPool1d if dims == 1 else nn.AvgPool2d)(
                    **arguments, count_include_pad=bool(attrs["count_include_pad"]))
            return [layer], self.only_output(node)
        if op == "GlobalAveragePool":
            self.attributes(node, {})
            return [nn.GlobalAvgPool2d()], self.only_output(node)
        if op == "BatchNormalization":
            attrs = self.attributes(node, {"epsilon": 1e-5, "momentum": 0.9, "spatial": 1, "training_mode": 0,
                                           "is_test": 0, "consumed_inputs": []})
            if attrs["training_mode"] or attrs["spatial"] != 1:
                raise self.unsupported(node, "batch normalization in training mode or per activation")
            if len(node.inputs) != 5:
                raise self.error(node, f"{len(node.inputs)} inputs, expected 5")
            gamma, beta, mean, var = (self.weight(node, i, what, rank=1)
                                      for i, what in enumerate(("scale", "B", "mean", "var"), 1))
            if not len(gamma) == len(beta) == len(mean) == len(var) or np.any(var < 0):
                raise self.error(node, "scale, B, mean and var must be vectors of one length, var not negative")
            if not (attrs["epsilon"] > 0 and math.isfinite(attrs["epsilon"])):
                raise self.error(node, f"epsilon {attrs['epsilon']}")
            layer = nn.BatchNorm2d(len(gamma), eps=attrs["epsilon"])
            self.load(node, layer, weight=gamma, bias=beta, running_mean=mean, running_var=var)
            return [layer], self.only_output(node)
        if op in ("Relu", "Sigmoid", "Tanh"):
            self.attributes(node, {"consumed_inputs": []})
            return [{"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh}[op]()], self.only_output(node)
        if op == "LeakyRelu":
            (alpha,) = self.attributes(node, {"alpha": 0.01}).values()
            return [nn.LeakyReLU(alpha)], self.only_output(node)
        if op == "Clip":
            attrs = self.attributes(node, {"min": -math.inf, "max": math.inf})
            low, high = attrs["min"], attrs["max"]
            if len(node.inputs) > 1 and node.inputs[1]:
                low = float(self.constant(node, node.inputs[1], "min"))
            if len(node.inputs) > 2 and node.inputs[2]:
                high = float(self.constant(node, node.inputs[2], "max"))
            if low != 0 or high != math.inf:
                raise self.unsupported(node, f"a Clip to [{low}, {high}] (only [0, inf), a ReLU, maps to juanji)")
            return [nn.ReLU()], self.only_output(node)
        if op == "Softmax":
            (axis,) = self.attributes(node, {"axis": -1 if self.opset >= 13 else 1}).values()
            if rank is None or axis not in (rank - 1, -1):
                raise self.unsupported(node, f"a Softmax on axis {axis} of a rank-{rank} input (juanji's "
                                       "is over the last axis)")
            if self.opset < 13 and axis == -1 and rank != 2:
                raise self.unsupported(node, "a Softmax of opset < 13 on axis -1 of a rank > 2 input")
            return [nn.Softmax()], self.only_output(node)
        if op == "Flatten":
            (axis,) = self.attributes(node, {"axis": 1}).values()
            if axis != 1 and not (rank is not None and axis == 1 - rank):
                raise self.unsupported(node, f"a Flatten at axis {axis} (juanji keeps the batch, axis 1)")
            return [nn.Flatten()], self.only_output(node)
        if op == "Reshape":
            attrs = self.attributes(node, {"allowzero": 0})
            if len(node.inputs) < 2 or not node.inputs[1]:
                raise self.error(node, "no shape input")
            target = self.shape_value(node, node.inputs[1])
            features = math.prod(shape[1:]) if shape is not None else None
            batch = {"N", self.input_batch} - {None}
            flatten = len(target) == 2 and (
                (target[0] == 0 and not attrs["allowzero"] and target[1] in (-1, features))
                or (target[0] == -1 and features is not None and target[1] == features)
                or (target[0] in batch and target[1] in (-1, features)))
            if not flatten:
                raise self.unsupported(node, f"a Reshape to {target} (juanji's Flatten keeps the batch, "
                                       "(N, -1))")
            return [nn.Flatten()], self.only_output(node)
        if op in ("Identity", "Dropout"):
            if op == "Dropout":
                self.attributes(node, {"ratio": 0.5, "seed": 0, "is_test": 0, "consumed_inputs": []})
                if len(node.inputs) > 2 and node.inputs[2]:
                    training = self.constant(node, node.inputs[2], "training_mode")
                    if training.size != 1 or bool(training.reshape(-1)[0]):
                        raise self.unsupported(node, "a Dropout in training mode")
            else:
                self.attributes(node, {})
            return [], self.only_output(node)
        raise self.unsupported(node)

    def linear(self, node: _Node, shape: tuple | None) -> tuple[list, str]:
        """Gemm, or MatMul with a constant matrix (and the Add of a constant bias after it)."""
        if shape is not None and len(shape) != 2:
            raise self.unsupported(node, f"a {node.op} on an input of shape {shape} (juanji's Linear takes "
                                   "(N, features))")
        if node.op == "Gemm":
            attrs = self.attributes(node, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0, "broadcast": 0})
            if attrs["alpha"] != 1.0 or attrs["transA"]:
                raise self.unsupported(node, f"a Gemm with alpha {attrs['alpha']}, transA {attrs['transA']}")
            w = self.weight(node, 1, "B", rank=2)
            if w is None:
                raise self.error(node, "no B input")
            w = w if attrs["transB"] else np.ascontiguousarray(w.T)
            b = self.weight(node, 2, "C")
            if b is not None and attrs["beta"] != 1.0:
                raise self.unsupported(node, f"a Gemm with beta {attrs['beta']}")
            output = self.only_output(node)
        else:
            self.attributes(node, {})
            w = self.weight(node, 1, "the second input", rank=2)
            w = np.ascontiguousarray(w.T)
            b = None
            output = self.only_output(node)
            following = self.consumers.get(output, [])
            if len(following) == 1 and following[0].op == "Add" and output not in self.graph_outputs:
                add = following[0]
                other = [name for name in add.inputs if name != output]
                if len(add.inputs) == 2 and len(other) == 1 and other[0] in self.constants:
                    b = self.weight(add, add.inputs.index(other[0]), "bias")
                    self.visited.add(add.index)
                    output = self.only_output(add)
        out_features, in_features = w.shape
        if shape is not None and shape[1] != in_features:
            raise self.error(node, f"its weight takes {in_features} features, the input has {shape[1]}")
        if b is not None:
            if b.size not in (1, out_features) or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1):
                raise self.unsupported(node, f"a bias of shape {b.shape} for {out_features} outputs")
            b = np.broadcast_to(b.reshape(-1), (out_features,))
        layer = nn.Linear(in_features, out_features, bias=b is not None)
        self.load(node, layer, weight=w, bias=b)
        return [layer], output

    def load(self, node: _Node, layer, **arrays) -> None:
        """Copies arrays into the layer's parameters and buffers of those (last) names."""
        by_name = {p.name.rsplit(".", 1)[-1]: p for p in [*layer.parameters(), *layer.buffers()]}
        for name, array in arrays.items():
            if array is None:
                continue
            p = by_name[name]
            if tuple(p.shape) != array.shape:
                raise self.error(node, f"{name} has shape {array.shape}, expected {tuple(p.shape)}")
            p.data = array

    # -- the whole graph ----------------------------------------------------------------------
    def run(self, proto) -> Any:
        graph = proto.graph
        inputs = [v for v in graph.input if v.name not in self.constants]
        if len(inputs) != 1:
            raise self.error(None, f"the graph has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); "
                             "juanji's import takes one")
        if len(graph.output) != 1:
            raise self.error(None, f"the graph has {len(graph.output)} outputs; juanji's import takes one")
        source = inputs[0]
        self.output = graph.output[0].name
        self.graph_outputs = {v.name for v in graph.output}
        tensor_type = source.type.tensor_type if source.type.HasField("tensor_type") else None
        if tensor_type is None or tensor_type.elem_type != self.onnx.TensorProto.FLOAT:
            raise self.error(None, f"input {source.name!r} is not a float32 tensor")
        shape = None
        self.input_batch = None
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            if len(dims) < 2:
                raise self.error(None, f"input {source.name!r} has {len(dims)} dimensions, expected (N, C, ...)")
            self.input_batch = dims[0]
            if all(d is not None and d > 0 for d in dims[1:]):
                shape = (1, *dims[1:])
        layers, _, _, merge = self.walk(source.name, shape, top=True)
        if merge is not None:
            raise self.unsupported(merge, "it joins a branch that does not start in the graph")
        return nn.Sequential(*layers).eval()


def import_onnx(path: str | os.PathLike) -> Any:
    """Reads an ONNX file into a juanji ``nn.Sequential`` (in eval mode), for graphs of one float32
    input and one output made of the ops juanji has: Conv (1-D, 2-D; pads even or as "same"),
    Gemm or MatMul + Add, MaxPool, AveragePool, GlobalAveragePool, BatchNormalization,
    Relu, LeakyRelu, Sigmoid, Tanh, Softmax (last axis), Flatten or Reshape to (N, -1), Add of
    two branches (a Residual), Concat of branches on the channels, Identity and Dropout (left
    out). Anything else, a malformed file, or an opset outside 7-22 raises ValueError naming
    the file and the node."""
    onnx = _onnx()
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"{name}: not a file" if os.path.exists(name) else f"{name}: no such file")
    size = os.path.getsize(name)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{name}: {size:,} bytes is more than an ONNX file can hold (2 GiB)")
    with open(name, "rb") as f:
        data = f.read()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError and whatever else a damaged file gives
        raise ValueError(f"{name}: not an ONNX model ({type(e).__name__}: {e})") from None
    if not proto.HasField("graph"):
        raise ValueError(f"{name}: not an ONNX model (no graph)")
    opsets = {o.domain: o.version for o in proto.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx"))
    if opset is None:
        raise ValueError(f"{name}: the model declares no opset of the default ONNX domain")
    if not MIN_IMPORT_OPSET <= opset <= MAX_IMPORT_OPSET:
        raise ValueError(f"{name}: opset {opset} is not supported (juanji imports opsets "
                         f"{MIN_IMPORT_OPSET} to {MAX_IMPORT_OPSET})")
    try:
        importer = _Importer(onnx, proto, name)
        importer.opset = opset
        return importer.run(proto)
    except RecursionError:
        raise ValueError(f"{name}: the graph nests branches too deeply") from None
