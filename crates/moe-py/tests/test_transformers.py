"""The transformers drop-in, end to end: a small random model of each of the seven families
(built from the family's fixture config with two decoder layers, fixed seed), patched vs
unpatched: logits within f32 1e-5 and 32 greedy tokens identical."""

from __future__ import annotations

import gc
import json
import os

import pytest
import torch
import transformers

import moe_rs
from moe_rs.transformers import MoeRsBlock, patch_model
from conftest import fixtures_dir

SUPPORTED = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss", "llama4"]


def model_type_of(d: dict) -> str:
    return d["model_type"]


def small_model(family: str, seed: int = 0) -> torch.nn.Module:
    """The family's fixture config (hidden 64, expert intermediate 32) with two layers."""
    d = json.loads((fixtures_dir() / "hf" / f"{family}-float32" / "config.json").read_text())
    d["num_hidden_layers"] = 2
    for per_layer in ("layer_types", "moe_layers", "no_rope_layers"):
        d.pop(per_layer, None)  # sized for the fixture's one layer; the defaults fit two
    if model_type_of(d) == "deepseek_v3":
        # MLA expands keys and values to every head (the real model has as many KV heads as
        # heads); the fixture only exercises the MoE block and says 2 of 4.
        d["num_key_value_heads"] = d["num_attention_heads"]
    model_type = d.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **d)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def moe_block(layer: torch.nn.Module) -> torch.nn.Module:
    return layer.feed_forward if hasattr(layer, "feed_forward") else layer.mlp


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("family", SUPPORTED)
def test_patched_model_matches_transformers(family):
    model = small_model(family)
    vocab = model.config.get_text_config().vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 12), generator=g)
    prompt = ids[:1, :6]
    with torch.no_grad():
        ref_logits = model(ids).logits
        ref_tokens = model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                    pad_token_id=0)

    experts_before = [moe_block(layer).experts.gate_up_proj.data_ptr() for layer in model.model.layers]
    patched = patch_model(model)
    assert patched == [0, 1]
    for layer in model.model.layers:
        block = moe_block(layer)
        assert isinstance(block, MoeRsBlock)
        assert not hasattr(block, "experts")  # the model's expert tensors are no longer held twice
        assert block.layer.report()  # a real layer behind it
    assert len(experts_before) == 2

    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    assert rel_max(logits, ref_logits) <= 1e-5, f"{family}: logits rel max err {rel_max(logits, ref_logits):.2e}"
    assert tokens.shape == ref_tokens.shape == (1, 6 + 32)
    assert torch.equal(tokens, ref_tokens)


def test_block_matches_the_transformers_block_in_bf16():
    model = small_model("qwen3_moe").to(torch.bfloat16)
    block = model.model.layers[0].mlp
    x = torch.randn(1, 9, 64, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    with torch.no_grad():
        ref = block(x)
        ours = MoeRsBlock(block, model.config.to_dict(), 0)(x)
    assert ours.dtype == torch.bfloat16 and ours.shape == ref.shape
    err = float((ours.float() - ref.float()).norm() / ref.float().norm())
    assert err <= 3e-2


def test_unsupported_layouts_are_refused():
    model = small_model("mixtral")
    block = model.model.layers[0].mlp
    block.experts.down_proj = torch.nn.Parameter(block.experts.down_proj.data.transpose(1, 2).contiguous())
    with pytest.raises(NotImplementedError, match="layout|laid out"):
        MoeRsBlock(block, model.config.to_dict(), 0)
    with pytest.raises(moe_rs.ConfigError):
        MoeRsBlock(model.model.layers[1].mlp, {"model_type": "not_a_family"}, 1)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS is read from /proc (Linux)")
def test_patching_does_not_hold_the_experts_twice():
    d = json.loads((fixtures_dir() / "hf" / "qwen3_moe-float32" / "config.json").read_text())
    d.update(num_hidden_layers=2, hidden_size=512, moe_intermediate_size=256, num_experts=32,
             head_dim=64, num_attention_heads=8, num_key_value_heads=4)
    d.pop("layer_types", None)
    config = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    experts_mib = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".experts." in n) / 2**20
    assert experts_mib >= 40  # large enough that a second copy stands out of the RSS noise
    gc.collect()
    before = _rss_mib()
    patch_model(model)
    gc.collect()
    grown = _rss_mib() - before
    # The layer's copy replaces the model's (freed with its experts module): a second copy
    # would grow RSS by about experts_mib.
    assert grown < 0.5 * experts_mib, f"patching grew RSS by {grown:.1f} MiB for {experts_mib:.1f} MiB of experts"
