"""A drop-in for transformers' sparse MoE blocks: :func:`patch_model` replaces the sparse
MoE block of every MoE decoder layer of a loaded model with :class:`MoeRsBlock`, which keeps
the model's router and shared experts and runs the routed experts through the moe layer.

Families (transformers 5 module layouts): Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and
DeepSeek-V3 (``mlp.gate`` returning the router logits first, ``experts.gate_up_proj``
``[E, 2I, H]`` with the gate half first, ``experts.down_proj`` ``[E, H, I]``); GPT-OSS
(``mlp.router`` with a bias, ``gate_up_proj`` ``[E, H, 2I]`` with gate and up interleaved by
column, biases, ``down_proj`` ``[E, I, H]``; the block returns ``(out, router_scores)``); and
Llama 4 (``feed_forward.router`` returning ``(scores, logits)``, ``gate_up_proj``
``[E, H, 2I]`` gate half first, ``down_proj`` ``[E, I, H]``, a shared expert; the block
returns ``(out, router_logits)``).

Weights: for the ``[E, 2I, H]`` layout the layer reads the model's expert tensors in place
(DLPack views of each expert's rows, no staging copy); the transposed layouts of GPT-OSS and
Llama 4 are transposed one expert at a time at load (a transient copy of one expert, as
``moe-hf`` does for checkpoints). The layer lays the weights out in its own format, and the
patched block then drops its reference to the model's ``experts`` module, so the experts are
held once, by the layer. The routing math is the family's, as ``moe-hf`` maps the model's
config (the layer routes from the router's logits); the router and shared experts run in
torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import Layer, moe_config_from_hf

_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def _fused_weights(experts: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical per-expert views of ``[E, 2I, H]`` / ``[E, H, I]`` tensors (no copies: each
    is a row range of one expert's contiguous slice)."""
    gate_up, down = _params(experts, "gate_up_proj", "down_proj")
    e, two_i, h = gate_up.shape
    i = two_i // 2
    if two_i != 2 * i or tuple(down.shape) != (e, h, i) or hasattr(experts, "gate_up_proj_bias"):
        raise NotImplementedError(
            f"{type(experts).__name__}: experts laid out as gate_up {tuple(gate_up.shape)}, down "
            f"{tuple(down.shape)}; this family's drop-in takes [E, 2I, H] (gate half first) and [E, H, I] without biases"
        )
    w = {}
    for x in range(e):
        w[f"{x}.w1.weight"] = gate_up[x, :i]
        w[f"{x}.w3.weight"] = gate_up[x, i:]
        w[f"{x}.w2.weight"] = down[x]
    return w


def _transposed_weights(experts: nn.Module, interleaved: bool) -> dict[str, torch.Tensor]:
    """Canonical tensors of ``[E, H, 2I]`` / ``[E, I, H]`` experts (GPT-OSS: gate and up
    interleaved by column, with biases; Llama 4: gate half first), each expert transposed
    into a contiguous tensor (the layer needs ``[I, H]`` rows)."""
    gate_up, down = _params(experts, "gate_up_proj", "down_proj")
    e, h, two_i = gate_up.shape
    i = two_i // 2
    if two_i != 2 * i or tuple(down.shape) != (e, i, h):
        raise NotImplementedError(
            f"{type(experts).__name__}: experts laid out as gate_up {tuple(gate_up.shape)}, down "
            f"{tuple(down.shape)}; this family's drop-in takes [E, H, 2I] and [E, I, H]"
        )
    gate = (slice(0, None, 2), slice(1, None, 2)) if interleaved else (slice(0, i), slice(i, None))
    w = {}
    for x in range(e):
        w[f"{x}.w1.weight"] = gate_up[x][:, gate[0]].t().contiguous()
        w[f"{x}.w3.weight"] = gate_up[x][:, gate[1]].t().contiguous()
        w[f"{x}.w2.weight"] = down[x].t().contiguous()
    if hasattr(experts, "gate_up_proj_bias"):
        gate_up_bias, down_bias = _params(experts, "gate_up_proj_bias", "down_proj_bias")
        for x in range(e):
            w[f"{x}.w1.bias"] = gate_up_bias[x][gate[0]].contiguous()
            w[f"{x}.w3.bias"] = gate_up_bias[x][gate[1]].contiguous()
            w[f"{x}.w2.bias"] = down_bias[x]
    return w


def _params(module: nn.Module, *names: str) -> list[torch.Tensor]:
    out = []
    for n in names:
        t = getattr(module, n, None)
        if not isinstance(t, torch.Tensor):
            raise NotImplementedError(f"{type(module).__name__}: the drop-in needs a `{n}` tensor")
        out.append(t.detach())
    return out


def _family(hf_config: dict) -> str:
    t = hf_config.get("model_type")
    return "llama4" if t in ("llama4", "llama4_text") else str(t)


class MoeRsBlock(nn.Module):
    """A transformers sparse MoE block whose routed experts run in the moe layer.

    ``block`` is the model's block (its router and shared experts are kept as submodules);
    ``hf_config`` the model's config as a dict; ``layer_idx`` the decoder layer's index.
    ``forward`` returns what the replaced block returned (a tensor, or GPT-OSS's and
    Llama 4's tuples).
    """

    def __init__(self, block: nn.Module, hf_config: dict, layer_idx: int, backend: str | None = None) -> None:
        super().__init__()
        self.family = _family(hf_config)
        experts = block.experts
        dtype = experts.gate_up_proj.dtype
        if dtype not in _DTYPES:
            raise NotImplementedError(f"experts in {dtype}: the drop-in takes float32, bfloat16 or float16")
        config = moe_config_from_hf(hf_config, layer_idx, _DTYPES[dtype])
        router = getattr(block, "gate", None)
        if router is None:
            router = getattr(block, "router", None)
        if router is None:
            raise NotImplementedError(f"{type(block).__name__}: no `gate` or `router` module")
        bias = getattr(router, "e_score_correction_bias", None)
        if bias is not None and config["routing"].get("method") == "deep_seek_v3":
            config["routing"]["e_score_correction_bias"] = bias.detach().float().tolist()
        if backend is not None:
            config["backend"] = backend
        if self.family == "gpt_oss":
            weights = _transposed_weights(experts, interleaved=True)
        elif self.family == "llama4":
            weights = _transposed_weights(experts, interleaved=False)
        else:
            weights = _fused_weights(experts)
        self.layer = Layer(config)
        self.layer.load_weights(weights)
        del weights
        self.hidden_size = config["hidden_size"]
        self.router = router
        self.shared_expert = getattr(block, "shared_expert", None)
        self.shared_expert_gate = getattr(block, "shared_expert_gate", None)
        self.shared_experts = getattr(block, "shared_experts", None)

    def forward(self, hidden_states: torch.Tensor) -> Any:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, self.hidden_size).contiguous()
        routed = self.router(x)
        # Llama 4's router returns (scores, logits); the others (logits, weights, indices).
        logits = routed[1] if self.family == "llama4" else routed[0]
        y = self.layer.forward(x, logits.float().contiguous())
        if self.shared_expert is not None:
            s = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                s = torch.sigmoid(self.shared_expert_gate(x)) * s
            y = y + s
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        if self.family == "gpt_oss":
            return y.reshape(shape), routed[1]
        if self.family == "llama4":
            return y, logits
        return y.reshape(shape)


def _decoder_layers(model: nn.Module) -> Any:
    for path in ("model.layers", "model.language_model.layers", "language_model.model.layers", "layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise ValueError(f"{type(model).__name__}: no decoder layers found")


def patch_model(model: nn.Module, *, backend: str | None = None) -> list[int]:
    """Replaces the sparse MoE block (``layer.mlp``, or Llama 4's ``layer.feed_forward``,
    with ``experts`` and a ``gate`` or ``router``) of every decoder layer of ``model`` by a
    :class:`MoeRsBlock`; returns the patched layer indices."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hf = text.to_dict()
    hf.setdefault("model_type", getattr(text, "model_type", None))
    patched = []
    for idx, layer in enumerate(_decoder_layers(model)):
        for attr in ("mlp", "feed_forward"):
            block = getattr(layer, attr, None)
            if block is None or not hasattr(block, "experts"):
                continue
            if not (hasattr(block, "gate") or hasattr(block, "router")):
                continue
            setattr(layer, attr, MoeRsBlock(block, hf, idx, backend))
            patched.append(idx)
    return patched
