"""A layer built from a config in Python, weights from a dict of tensors, against a torch
reference of the same math; the report as a dict; the runtime's errors as exceptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import moe_rs

E, H, I, K, T = 8, 32, 48, 2, 11


def config(dtype: str, **extra) -> dict:
    c = {
        "num_experts": E,
        "hidden_size": H,
        "intermediate_size": I,
        "activation": {"kind": "swiglu"},
        "dtype": dtype,
        "routing": {"method": "renormalize", "top_k": K},
    }
    c.update(extra)
    return c


def weights(dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = {}
    for e in range(E):
        w[f"{e}.w1.weight"] = (torch.randn(I, H, generator=g) / H**0.5).to(dtype)
        w[f"{e}.w3.weight"] = (torch.randn(I, H, generator=g) / H**0.5).to(dtype)
        w[f"{e}.w2.weight"] = (torch.randn(H, I, generator=g) / I**0.5).to(dtype)
    return w


def reference(w: dict, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the experts, top-k, renormalised; SwiGLU experts; weighted sum (f32)."""
    x = x.float()
    probs = torch.softmax(logits.float(), dim=-1)
    top_w, top_i = probs.topk(K, dim=-1)
    top_w = top_w / top_w.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(K):
            e = int(top_i[t, k])
            h = torch.nn.functional.silu(w[f"{e}.w1.weight"].float() @ x[t]) * (w[f"{e}.w3.weight"].float() @ x[t])
            out[t] += top_w[t, k] * (w[f"{e}.w2.weight"].float() @ h)
    return out


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize(
    "name,tdtype,tol",
    [("f32", torch.float32, 1e-5), ("bf16", torch.bfloat16, 3e-2), ("f16", torch.float16, 5e-3)],
)
def test_layer_matches_torch_reference_in_every_dtype(name, tdtype, tol):
    layer = moe_rs.Layer(config(name))
    w = weights(tdtype)
    layer.load_weights(w)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, H, generator=g).to(tdtype)
    logits = torch.randn(T, E, generator=g)
    y = layer.forward(x, logits)
    assert isinstance(y, torch.Tensor) and y.dtype == tdtype and y.shape == (T, H)
    assert rel_l2(y, reference(w, x, logits)) <= tol


def test_numpy_in_numpy_out():
    layer = moe_rs.Layer(config("f32"))
    w = weights(torch.float32)
    layer.load_weights({k: v.numpy() for k, v in w.items()})
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, H), dtype=np.float32)
    logits = rng.standard_normal((T, E), dtype=np.float32)
    y = layer.forward(x, logits)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    ref = reference(w, torch.from_numpy(x), torch.from_numpy(logits))
    assert rel_l2(torch.tensor(y), ref) <= 1e-5


def test_report_and_config_are_dicts():
    layer = moe_rs.Layer(config("f32", backend="reference"))
    report = layer.report()
    assert isinstance(report, dict)
    assert layer.backend_name == "reference"
    assert "reference" in str(report)
    c = layer.config()
    assert c["num_experts"] == E and c["routing"]["top_k"] == K


def test_layer_from_hf_config_maps_the_family():
    hf = {
        "model_type": "qwen3_moe",
        "hidden_size": H,
        "moe_intermediate_size": I,
        "intermediate_size": 64,
        "num_experts": E,
        "num_experts_per_tok": K,
        "norm_topk_prob": True,
        "num_hidden_layers": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "torch_dtype": "float32",
    }
    layer = moe_rs.Layer.from_hf_config(hf, 1)
    c = layer.config()
    assert (c["num_experts"], c["hidden_size"], c["intermediate_size"]) == (E, H, I)
    assert c["routing"]["top_k"] == K


def test_output_is_the_layers_memory():
    layer = moe_rs.Layer(config("f32"))
    layer.load_weights(weights(torch.float32))
    x, logits = torch.randn(T, H), torch.randn(T, E)
    raw = layer._inner.forward(x, logits)  # the DlpackTensor before conversion
    y = torch.from_dlpack(raw)
    assert y.data_ptr() == raw.data_ptr


def test_errors_carry_the_rust_message():
    with pytest.raises(moe_rs.ConfigError, match="not a MoeConfig"):
        moe_rs.Layer({"num_experts": 4})
    with pytest.raises(moe_rs.ConfigError, match="num_experts"):
        moe_rs.Layer(config("f32", num_experts=0))
    layer = moe_rs.Layer(config("f32"))
    with pytest.raises(moe_rs.MoeError, match="lifecycle"):
        layer.forward(torch.randn(T, H), torch.randn(T, E))
    w = weights(torch.float32)
    del w["3.w2.weight"]
    with pytest.raises(moe_rs.ConfigError, match=r"3\.w2\.weight"):
        layer.load_weights(w)
    layer.load_weights(weights(torch.float32))
    with pytest.raises(moe_rs.ShapeError, match="shape mismatch"):
        layer.forward(torch.randn(T, H + 1), torch.randn(T, E))
    with pytest.raises(moe_rs.ShapeError, match="router_logits"):
        layer.forward(torch.randn(T, H), torch.randn(T, E + 1))
    with pytest.raises(moe_rs.DTypeError, match="router_logits|f32"):
        layer.forward(torch.randn(T, H), torch.randn(T, E).to(torch.int32))
    fresh = moe_rs.Layer(config("f32"))
    bad = weights(torch.float32)
    bad["0.w1.weight"] = torch.randn(I, H + 2)
    with pytest.raises(moe_rs.ShapeError, match=r"0\.w1\.weight"):
        fresh.load_weights(bad)
    with pytest.raises(moe_rs.MoeError, match="already loaded"):
        layer.load_weights(weights(torch.float32))
