"""engine.model.Linear: one sequence's product through the held transposed view of the weight is nn.Linear's
product, as one graph node, and only while the weight it views is the layer's."""

from __future__ import annotations

import re

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine.model import Linear


def graph_nodes(tmp_path, y: mx.array) -> list[str]:
    """Primitive names in y's unevaluated graph (MLX's DOT export)."""
    mx.export_to_dot(str(tmp_path / "g.dot"), y)
    labels = re.findall(r'label ?= ?"([^"]*)"', (tmp_path / "g.dot").read_text())
    return [label for label in labels if label[:1].isupper()]


def layer_and_reference(dtype: mx.Dtype, bias: bool) -> tuple[Linear, nn.Linear]:
    mx.random.seed(3)
    layer, ref = Linear(48, 40, bias=bias), nn.Linear(48, 40, bias=bias)
    layer.set_dtype(dtype)
    ref.update(layer.parameters())
    mx.eval(layer.parameters())
    return layer, ref


@pytest.mark.parametrize("T", [1, 7, 300], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
def test_a_held_view_gives_nn_linears_product_in_one_node(tmp_path, dtype, bias, T):
    layer, ref = layer_and_reference(dtype, bias)
    layer.hold_weight_view()
    x = mx.random.normal((1, T, 48)).astype(dtype)
    mx.eval(x)
    got = layer(x)
    nodes, ref_nodes = graph_nodes(tmp_path, got), graph_nodes(tmp_path, ref(x))
    if not bias:  # (Qwen3.5's layers have none; a bias adds its broadcast)
        assert nodes == ["Matmul"]
    assert len(nodes) < len(ref_nodes), (nodes, ref_nodes)  # nn.Linear's: transpose, flatten, unflatten too
    np.testing.assert_array_equal(np.array(got.astype(mx.float32)), np.array(ref(x).astype(mx.float32)))


@pytest.mark.parametrize("shape", [(2, 5, 48), (3, 1, 48), (5, 48), (48,)], ids=["batch", "batch1", "2d", "vector"])
def test_other_shapes_take_nn_linears_path(shape):
    layer, ref = layer_and_reference(mx.float32, False)
    layer.hold_weight_view()
    x = mx.random.normal(shape)
    np.testing.assert_array_equal(np.array(layer(x)), np.array(ref(x)))


def test_a_replaced_weight_is_used_not_the_held_view():
    """Loading weights after the view was taken (or fusing layers, which copies a Linear) must not multiply by
    the old weight."""
    layer, _ = layer_and_reference(mx.float32, False)
    layer.hold_weight_view()
    new = mx.random.normal((40, 48))
    layer.update({"weight": new})
    x = mx.random.normal((1, 1, 48))
    np.testing.assert_allclose(np.array(layer(x)), np.array(x @ new.T), rtol=1e-6)
