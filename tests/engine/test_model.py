"""engine.model.Linear: one sequence's product through the held transposed view of the weight is nn.Linear's
product, as one graph node, and only while the weight it views is the layer's; and the GDN layer hands its fused
projection to the GPU kernels that read columns of it in place."""

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


def test_prefill_kernels_read_the_fused_projection_in_place(tmp_path, monkeypatch):
    """On the GPU path a GDN layer's prologue and gated norm are given the fused projection itself (q | k | v, z,
    b, a) and read their columns where they lie: a column slice would be copied before the kernel runs."""
    from engine.loading import load_model
    from kernels import gpu, norm
    from tests.engine.hf_checkpoints import make_checkpoint
    from tests.kernels.emulator.cuda_emulate import record_launches

    make_checkpoint(tmp_path, seed=2, linear_num_value_heads=4)
    model = load_model(tmp_path, mx.float32)
    monkeypatch.setattr(gpu, "gpu_backend", lambda: "cuda")
    monkeypatch.setattr(norm, "gpu_backend", lambda: "cuda")
    _, launches = record_launches(lambda: model(mx.array([[3, 1, 4, 1, 5, 9, 2, 6]]), model.make_cache()))
    gdn = next(layer.linear_attn for layer in model.layers if layer.is_linear)
    width = gdn.fused_proj.weight.shape[0]
    assert width == gdn.conv_dim + gdn.value_dim + 2 * gdn.num_v_heads
    prologues = [x for x in launches if x.name == "prologue"]
    norms = [x for x in launches if x.name == "gated_rms_norm"]
    n_gdn = sum(layer.is_linear for layer in model.layers)
    assert len(prologues) == len(norms) == n_gdn
    for p in prologues:
        assert p.inputs[0].shape == (1, 8, width) and dict(p.template)["QP"] == width
    for n in norms:
        assert n.inputs[1].shape == (1, 8, width) and dict(n.template)["ZO"] == gdn.conv_dim


def test_the_loader_buckets_prefill_rows_and_coarsens_kv_growth_on_nvidia_gpus_only(tmp_path, monkeypatch):
    from engine import loading
    from engine.cache import KVCache
    from tests.engine.hf_checkpoints import make_checkpoint

    make_checkpoint(tmp_path, seed=2)
    for backend, bucket, step in (("cpu", 0, 256), ("metal", 0, 256), ("cuda", 64, 1024)):
        monkeypatch.setattr(loading, "backend_name", lambda b=backend: b)
        model = loading.load_model(tmp_path, mx.float32)
        assert model.model.row_bucket == bucket, backend
        assert {c.step for c in model.make_cache() if isinstance(c, KVCache)} == {step}, backend


def test_warm_up_multiplies_each_layer_weight_at_each_bucketed_row_count(tmp_path, monkeypatch):
    """`warm_row_buckets` runs every distinct weight shape of the layers' Linears (not the head) at every multiple
    of the bucket up to a prefill step, each once; without a bucket nothing."""
    from engine.loading import load_model
    from engine.model import warm_row_buckets
    from tests.engine.hf_checkpoints import make_checkpoint

    make_checkpoint(tmp_path, seed=2)
    model = load_model(tmp_path, mx.float32)
    calls = []
    real = Linear.__call__
    monkeypatch.setattr(Linear, "__call__", lambda self, x: calls.append((self.weight.shape, x.shape)) or real(self, x))
    assert warm_row_buckets(model.layers, 40, 0) == 0 and calls == []
    runs = warm_row_buckets(model.layers, 40, 16)
    weights = {tuple(m.weight.shape) for layer in model.layers for _, m in layer.named_modules()
               if isinstance(m, Linear)}
    assert sorted((tuple(w), x) for w, x in calls) == sorted((w, (1, rows, w[1])) for w in weights
                                                              for rows in (16, 32, 48))
    assert runs == len(calls)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("method", ["serial", "chunked"])
@pytest.mark.parametrize("T", [2, 63, 64, 70], ids=lambda t: f"T{t}")
def test_a_bucketed_step_gives_the_same_logits_and_caches(tmp_path, method, T, fuse):
    """A step whose row-wise work runs on padded rows (TextModel.row_bucket, NVIDIA GPUs) gives the plain step's
    logits at every position and the same caches: no padding row reaches a mixer (GDN state and conv state,
    attention keys and values), and the decode after it agrees."""
    from engine.cache import cache_arrays, set_gdn_path
    from engine.loading import load_model
    from tests.engine.hf_checkpoints import make_checkpoint

    make_checkpoint(tmp_path, seed=4)
    model = load_model(tmp_path, mx.float32, fuse=fuse)  # fused projections (the server's) or one Linear each
    ids = mx.array([[(7 * i + 3) % model.args.vocab_size for i in range(T)]])
    results = []
    for bucket in (0, 64):
        model.model.row_bucket = bucket
        cache = model.make_cache()
        set_gdn_path(cache, method, 16)
        logits = model(ids, cache)
        after = model(mx.array([[5]]), cache)
        results.append([logits, after, *cache_arrays(cache)])
    plain, bucketed = results
    assert bucketed[0].shape == (1, T, model.args.vocab_size)
    assert len(plain) == len(bucketed)
    for want, got in zip(plain, bucketed, strict=True):
        assert got.shape == want.shape
        # (fp32: the BLAS may block a padded GEMM differently: rounding moves; a leaked padding row would not
        # stay within 1e-4)
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-4)
