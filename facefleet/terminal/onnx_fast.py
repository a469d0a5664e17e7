"""The terminal's onnxruntime session: one construction path (used by the agent and by bench/terminal.py)
and an inference-only rewrite of the verified ONNX graph, in memory (the signed file on disk is untouched).

Why the rewrite: with ORT_ENABLE_ALL on x86, onnxruntime runs Conv in a blocked channel layout (NCHWc).
PRelu has no blocked kernel, so every PRelu costs a ReorderOutput, a slow broadcast PRelu in NCHW and a
ReorderInput (measured: ~70 % of MobileFaceNet's time on one thread). PRelu rewritten as
``y + s * Relu(c * y)`` with ``c = -|a - 1|`` and ``s = sign(1 - a)`` (s = 1 where a <= 1, -1 where a > 1)
stays in the blocked layout: the per-channel Mul becomes a 1×1 depthwise conv with Relu fused, the Add is
an elementwise blocked op. It is exact up to float rounding: for y >= 0 the Relu term is 0; for y < 0 and
a <= 1 it is (a - 1) * y, giving a * y; for a > 1 it is (1 - a) * y, subtracted, giving a * y.
Slopes hidden behind Identity nodes (the exporter shares equal tensors) are rewritten too. A BatchNorm
after the embedding Gemm, which onnxruntime does not fold, is folded into it (exact).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def terminal_session_options(
    threads: int = 1, optimized_model_path: Path | None = None
) -> ort.SessionOptions:
    """The options every terminal session uses (bench/terminal.py measures exactly these)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ENABLE_ALL adds the NCHWc layout transformer: measured ~2× faster than EXTENDED on both nets.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # A terminal idles between faces; spinning worker threads would only burn its CPU (no effect at 1 thread).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Denormal floats (from near-zero activations) are far slower on CPUs and matter nothing here.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.log_severity_level = 3  # ORT warns about every initializer it drops after our rewrite
    if optimized_model_path is not None:  # diagnostics only (bench): the graph ORT actually runs
        options.optimized_model_filepath = str(optimized_model_path)
    return options


def open_terminal_session(
    onnx_bytes: bytes, threads: int = 1, optimized_model_path: Path | None = None
) -> ort.InferenceSession:
    """An onnxruntime CPU session of the rewritten graph with the terminal's options."""
    return ort.InferenceSession(
        rewrite_for_inference(onnx_bytes),
        terminal_session_options(threads, optimized_model_path),
        providers=["CPUExecutionProvider"],
    )


def _constant_initialisers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initialisers by name, also under the names of Identity nodes that alias them (the TorchScript
    exporter deduplicates equal weights, e.g. freshly initialised PReLU slopes, behind Identity nodes)."""
    found = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in found:
            found[node.output[0]] = found[node.input[0]]
    return found


def _prelu_nodes(
    node: onnx.NodeProto, slopes: np.ndarray, prefix: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing PRelu(x) = x + s * Relu(c * x), and their new constants."""
    x, out = node.input[0], node.output[0]
    slopes = slopes.astype(np.float32)
    scale = -np.abs(slopes - 1.0)
    constants = [numpy_helper.from_array(scale.astype(np.float32), prefix + "_c")]
    nodes = [
        helper.make_node("Mul", [x, prefix + "_c"], [prefix + "_cx"]),
        helper.make_node("Relu", [prefix + "_cx"], [prefix + "_r"]),
    ]
    term = prefix + "_r"
    if np.any(slopes > 1.0):
        sign = np.where(slopes <= 1.0, 1.0, -1.0).astype(np.float32)
        constants.append(numpy_helper.from_array(sign, prefix + "_s"))
        nodes.append(helper.make_node("Mul", [term, prefix + "_s"], [prefix + "_sr"]))
        term = prefix + "_sr"
    nodes.append(helper.make_node("Add", [x, term], [out]))
    return nodes, constants


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove Identity nodes and initialisers nothing reads any more (after PRelu slopes were replaced)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        dead = [n for n in graph.node if n.op_type == "Identity" and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _is_linear(gemm: onnx.NodeProto) -> bool:
    """A Gemm as torch.nn.Linear exports it: x @ W.T + b, no scaling."""
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
    return plain and not attrs.get("transA", 0) and attrs.get("transB", 0) == 1


def _fold_batchnorm_into_gemm(graph: onnx.GraphProto) -> bool:
    """Fold BatchNormalization that directly follows a Linear-style Gemm into the Gemm (exact, inference
    only); onnxruntime folds BN into Conv itself but leaves it after Gemm (the embedding's BatchNorm1d)."""
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    readers = collections.Counter(name for node in graph.node for name in node.input)
    changed = False
    for bn in [node for node in graph.node if node.op_type == "BatchNormalization"]:
        gemm = producers.get(bn.input[0])
        if gemm is None or gemm.op_type != "Gemm" or readers[bn.input[0]] != 1 or len(bn.output) != 1:
            continue
        if not _is_linear(gemm) or not all(name in inits for name in [*gemm.input[1:], *bn.input[1:]]):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[name]) for name in bn.input[1:5])
        eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        weight = numpy_helper.to_array(inits[gemm.input[1]])
        bias = numpy_helper.to_array(inits[gemm.input[2]]) if len(gemm.input) > 2 else np.zeros_like(mean)
        prefix = f"{bn.output[0]}__gemm_bn"
        graph.initializer.extend(
            [
                numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), prefix + "_w"),
                numpy_helper.from_array(((bias - mean) * scale + beta).astype(np.float32), prefix + "_b"),
            ]
        )
        del gemm.input[1:]
        gemm.input.extend([prefix + "_w", prefix + "_b"])
        gemm.output[0] = bn.output[0]
        graph.node.remove(bn)
        changed = True
    return changed


def rewrite_for_inference(model_bytes: bytes) -> bytes:
    """The same function with every constant-slope PRelu replaced by ops that stay in the NCHWc layout
    and a BatchNormalization after a Gemm folded into it."""
    model = onnx.load_from_string(model_bytes)
    constants = _constant_initialisers(model.graph)
    nodes: list[onnx.NodeProto] = []
    new_constants: list[onnx.TensorProto] = []
    for index, node in enumerate(model.graph.node):
        if node.op_type != "PRelu" or node.input[1] not in constants:
            nodes.append(node)
            continue
        slopes = numpy_helper.to_array(constants[node.input[1]])
        replacement, added = _prelu_nodes(node, slopes, f"{node.output[0]}__prelu{index}")
        nodes += replacement
        new_constants += added
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_constants)
    if not _fold_batchnorm_into_gemm(model.graph) and not new_constants:
        return model_bytes
    _drop_unused(model.graph)
    return model.SerializeToString()
