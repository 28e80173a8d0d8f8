#!/usr/bin/env python3
"""PyTorch baselines of the MoE layer on a GPU, next to which `moe bench --backend cuda` is read.

On the shapes and token counts of `moe bench` (bf16 weights and activations, x ~ N(0, 1),
router logits ~ N(0, 1), softmax -> top-k -> renormalize routing), it times:

- ``hf-eager``: the Hugging Face transformers 5.x MoE block (MixtralSparseMoeBlock,
  DeepseekV3MoE, Qwen3MoeSparseMoeBlock) with its stock per-expert eager loop
  (``config._experts_implementation = "eager"``). DeepseekV3MoE includes its shared expert.
- ``hf-grouped_mm``: the same block with transformers' own ``grouped_mm`` experts.
- ``torch-grouped_mm``: a plain ``torch._grouped_mm`` MoE of the routed experts only (what the
  moe layer computes): sort the (token, expert) pairs by expert, one grouped GEMM for
  gate+up, SiLU(gate) * up, one grouped GEMM for down, weighted scatter-add back to tokens.
- ``torch-grouped_mm+shared`` (DeepSeek-V3): the same plus the shared expert, as the HF block.

The HF router is replaced by one that routes the given logits (softmax, top-k, renormalize),
so every variant selects the same experts from N(0, 1) logits, like the Rust bench; DeepSeek's
sigmoid group routing is left out on purpose (the Rust bench does the same).

Ceilings are measured in the same run: a device-to-device copy (GB/s counting bytes read plus
bytes written) and an 8192^3 bf16 matmul on random data (TFLOP/s). Each row reports
``floor_ms = max(weight bytes of the experts touched / copy, FLOPs / matmul)`` and
``ratio_to_floor = median_ms / floor_ms``, as ``moe bench --backend cuda`` does.

Timing: CUDA events around each call, warm-up first, median of the repeats.
Output: a table on stdout, and JSON lines (one per row, plus one ``"kind": "ceilings"`` line)
to ``--out``.

``--summarize BENCH.jsonl BASELINE.jsonl`` prints the moe rows next to these (no torch needed).
"""

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time

PRESETS = {
    "qwen3-30b-a3b": dict(hidden=2048, inter=768, experts=128, top_k=8, shared_inter=0, family="qwen3_moe"),
    "mixtral-8x7b": dict(hidden=4096, inter=14336, experts=8, top_k=2, shared_inter=0, family="mixtral"),
    "deepseek-v3": dict(hidden=7168, inter=2048, experts=256, top_k=8, shared_inter=2048, family="deepseek_v3"),
}
DEFAULT_PRESETS = ["qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3"]
DEFAULT_TOKENS = [1, 8, 64, 512, 4096]
VARIANTS = ["hf-eager", "hf-grouped_mm", "torch-grouped_mm", "torch-grouped_mm+shared"]
BF16_BYTES = 2


def log(*args):
    print(*args, flush=True)


def warn(*args):
    print("warning:", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Arithmetic (the same as `moe bench`)
# ---------------------------------------------------------------------------------------------


def routed_flops(p, tokens):
    return 2.0 * tokens * p["top_k"] * 3.0 * p["hidden"] * p["inter"]


def shared_flops(p, tokens):
    return 2.0 * tokens * 3.0 * p["hidden"] * p["shared_inter"]


def expert_bytes(p):
    return 3 * p["hidden"] * p["inter"] * BF16_BYTES


def shared_bytes(p):
    return 3 * p["hidden"] * p["shared_inter"] * BF16_BYTES


def floor_ms(flop, nbytes, ceil):
    return max(nbytes / (ceil["copy_gbps"] * 1e9), flop / (ceil["matmul_tflops"] * 1e12)) * 1e3


# ---------------------------------------------------------------------------------------------
# Timing and ceilings
# ---------------------------------------------------------------------------------------------


def time_cuda(torch, fn, warmup, repeats):
    """Median and min in ms of `repeats` calls of `fn`, each between two CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), min(times), len(times)


def measure_ceilings(torch, device, copy_mib, matmul_n, iters):
    nbytes = copy_mib << 20
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    copy_ms, _, _ = time_cuda(torch, lambda: dst.copy_(src), 3, iters)
    src = dst = None
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    c = torch.empty(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    mm_ms, _, _ = time_cuda(torch, lambda: torch.matmul(a, b, out=c), 3, iters)
    a = b = c = None
    torch.cuda.empty_cache()
    return {
        "kind": "ceilings",
        "card": torch.cuda.get_device_name(device),
        "copy_bytes": nbytes,
        "copy_gbps": 2.0 * nbytes / (copy_ms * 1e-3) / 1e9,
        "matmul_n": matmul_n,
        "matmul_tflops": 2.0 * matmul_n**3 / (mm_ms * 1e-3) / 1e12,
    }


# ---------------------------------------------------------------------------------------------
# grouped_mm
# ---------------------------------------------------------------------------------------------


def resolve_grouped_mm(torch, device):
    """The grouped GEMM entry point of this torch, checked on a small problem against a loop.

    Expected (torch 2.11): ``torch._grouped_mm(a, b, offs=...)`` (also exported as
    ``torch.nn.functional.grouped_mm``) with ``a [S, K]`` bf16, ``b [G, K, N]`` bf16 (a
    transposed view is fine), ``offs [G]`` int32 cumulative row ends, returning ``[S, N]``.
    """
    candidates = []
    if hasattr(torch.nn.functional, "grouped_mm"):
        candidates.append(("torch.nn.functional.grouped_mm", torch.nn.functional.grouped_mm))
    if hasattr(torch, "_grouped_mm"):
        candidates.append(("torch._grouped_mm", torch._grouped_mm))
    if not candidates:
        raise RuntimeError(
            f"torch {torch.__version__} has neither torch.nn.functional.grouped_mm nor torch._grouped_mm"
        )
    gen = torch.Generator(device=device).manual_seed(1)
    groups, k, n = 3, 64, 32
    rows = [8, 0, 24]  # an empty group included, as routing produces
    a = torch.randn(sum(rows), k, device=device, dtype=torch.bfloat16, generator=gen)
    w = torch.randn(groups, n, k, device=device, dtype=torch.bfloat16, generator=gen)  # [G, N, K] like HF
    offs = torch.cumsum(torch.tensor(rows, device=device), 0).to(torch.int32)
    want = torch.cat([a[s:e].float() @ w[g].float().t() for g, (s, e) in enumerate(zip([0] + offs.tolist()[:-1], offs.tolist()))])
    errors = []
    for name, fn in candidates:
        try:
            got = fn(a, w.transpose(-2, -1), offs=offs)
        except (TypeError, ValueError, RuntimeError) as e:  # signature or kernel mismatch
            errors.append(f"{name}(a, b, offs=offs) failed: {type(e).__name__}: {e}")
            continue
        if tuple(got.shape) != (sum(rows), n):
            errors.append(f"{name} returned shape {tuple(got.shape)}, expected {(sum(rows), n)}")
            continue
        err = ((got.float() - want).norm() / want.norm()).item()
        if not err < 2e-2:
            errors.append(f"{name} differs from the per-group loop (rel L2 {err:.3e})")
            continue
        return name, fn
    raise RuntimeError(
        "no usable grouped GEMM in torch "
        + torch.__version__
        + " (expected torch._grouped_mm(a [S,K], b [G,K,N], offs=int32 [G]) -> [S,N]):\n  "
        + "\n  ".join(errors)
    )


def route(torch, logits, top_k):
    """Softmax over the experts, top-k, renormalized: (weights f32 [T, k], ids [T, k])."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    w, idx = torch.topk(probs, top_k, dim=-1)
    return w / w.sum(dim=-1, keepdim=True), idx


def grouped_mm_moe(torch, gmm, x, logits, gate_up, down, top_k, shared=None):
    """Routed experts through two grouped GEMMs (gate_up [E, 2I, H], down [E, H, I], as HF)."""
    tokens = x.shape[0]
    experts = gate_up.shape[0]
    w, idx = route(torch, logits, top_k)
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
    token_of = order // top_k
    counts = torch.zeros(experts, dtype=torch.int64, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
    offs = torch.cumsum(counts, 0).to(torch.int32)  # no host sync
    xs = x.index_select(0, token_of)
    gu = gmm(xs, gate_up.transpose(-2, -1), offs=offs)
    g, u = gu.chunk(2, dim=-1)
    h = torch.nn.functional.silu(g) * u
    out = gmm(h, down.transpose(-2, -1), offs=offs)
    y = torch.zeros(tokens, x.shape[1], dtype=torch.float32, device=x.device)
    y.index_add_(0, token_of, out.float() * w.reshape(-1)[order].unsqueeze(-1))
    y = y.to(x.dtype)
    if shared is not None:
        y = y + shared(x)
    return y


# ---------------------------------------------------------------------------------------------
# Hugging Face blocks
# ---------------------------------------------------------------------------------------------


def hf_block(torch, p, device):
    """The HF block of `p` with bf16 parameters created directly on the device (no f32 copy)."""
    fam = p["family"]
    if fam == "mixtral":
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock as Block

        cfg = MixtralConfig(
            hidden_size=p["hidden"],
            intermediate_size=p["inter"],
            num_local_experts=p["experts"],
            num_experts_per_tok=p["top_k"],
            num_hidden_layers=1,
            router_jitter_noise=0.0,
        )
    elif fam == "deepseek_v3":
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE as Block

        cfg = DeepseekV3Config(
            hidden_size=p["hidden"],
            moe_intermediate_size=p["inter"],
            n_routed_experts=p["experts"],
            num_experts_per_tok=p["top_k"],
            n_shared_experts=p["shared_inter"] // p["inter"],
            num_hidden_layers=1,
            first_k_dense_replace=0,
        )
    elif fam == "qwen3_moe":
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock as Block

        cfg = Qwen3MoeConfig(
            hidden_size=p["hidden"],
            moe_intermediate_size=p["inter"],
            num_experts=p["experts"],
            num_experts_per_tok=p["top_k"],
            norm_topk_prob=True,
            num_hidden_layers=1,
        )
    else:
        raise ValueError(f"unknown family {fam}")
    cfg._experts_implementation = "eager"
    # Built on the meta device, cast there, then materialised in bf16 on the GPU: DeepSeek-V3's
    # experts are 22.5 GB in bf16 and would be 45 GB as f32.
    with torch.device("meta"):
        block = Block(cfg)
    block = block.to(torch.bfloat16).to_empty(device=device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, t in block.named_parameters():
            fan_in = t.shape[-1]
            a = math.sqrt(3.0 / fan_in)  # uniform with variance 1/fan_in, as the Rust bench
            t.uniform_(-a, a, generator=gen)
        for _, b in block.named_buffers():
            b.zero_()
    if not hasattr(block, "experts") or not hasattr(block.experts, "gate_up_proj"):
        raise RuntimeError(f"{Block.__name__} of this transformers has no experts.gate_up_proj")
    return cfg, block


def plain_weights(torch, p, device):
    """Expert weights in HF's layout (gate_up [E, 2I, H], down [E, H, I]) without the block."""
    gen = torch.Generator(device=device).manual_seed(0)
    e, h, i = p["experts"], p["hidden"], p["inter"]
    gate_up = torch.empty(e, 2 * i, h, device=device, dtype=torch.bfloat16)
    down = torch.empty(e, h, i, device=device, dtype=torch.bfloat16)
    gate_up.uniform_(-math.sqrt(3.0 / h), math.sqrt(3.0 / h), generator=gen)
    down.uniform_(-math.sqrt(3.0 / i), math.sqrt(3.0 / i), generator=gen)
    return gate_up, down


class FixedLogitsRouter:
    """Stands in for the HF router: routes the given logits (softmax, top-k, renormalize)."""

    def __new__(cls, torch, logits, top_k):
        class Router(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.logits = logits
                self.top_k = top_k

            def forward(self, hidden_states):
                w, idx = route(torch, self.logits, self.top_k)
                return self.logits, w, idx

        return Router()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def run(args):
    import torch

    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError as e:  # the HF variants are skipped, the plain ones still run
        tf_version = None
        warn(f"transformers is not importable ({e}); the hf-* variants are skipped")
    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")
    device = torch.device("cuda", args.device)
    torch.cuda.set_device(device)
    out = open(args.out, "w") if args.out else None

    def emit(obj):
        if out:
            out.write(json.dumps(obj) + "\n")
            out.flush()

    versions = {"torch": torch.__version__, "transformers": tf_version}
    log(f"torch {torch.__version__}, transformers {tf_version}, {torch.cuda.get_device_name(device)}")
    ceil = measure_ceilings(torch, device, args.copy_mib, args.matmul_n, 20)
    emit({**ceil, **versions})
    log(
        f"ceilings: device copy of {args.copy_mib} MiB {ceil['copy_gbps']:.0f} GB/s (read + written); "
        f"bf16 matmul {args.matmul_n}^3 {ceil['matmul_tflops']:.1f} TFLOP/s"
    )
    gmm_name, gmm = resolve_grouped_mm(torch, device)
    log(f"grouped GEMM: {gmm_name}")
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v} (known: {', '.join(VARIANTS)})")
    header = f"{'preset':<14} {'variant':<24} {'T':>5} {'experts':>7} {'median ms':>10} {'floor ms':>9} {'x floor':>8} {'TFLOP/s':>8} {'check':>9}"
    rows_text = [header]
    log(header)
    max_tokens = max(args.tokens)
    for name in args.presets:
        p = PRESETS[name]
        t0 = time.time()
        cfg, block, shared = None, None, None
        if tf_version is not None:
            try:
                cfg, block = hf_block(torch, p, device)
            except Exception as e:  # noqa: BLE001 - a missing class must not stop the plain variants
                warn(f"{name}: the HF block could not be built ({type(e).__name__}: {e}); hf-* variants skipped")
        if block is not None:
            gate_up, down = block.experts.gate_up_proj, block.experts.down_proj
            shared = getattr(block, "shared_experts", None)
        else:
            gate_up, down = plain_weights(torch, p, device)
        torch.cuda.synchronize()
        log(f"# {name}: weights ready in {time.time() - t0:.1f} s ({torch.cuda.memory_allocated(device) / 2**30:.1f} GiB allocated)")
        gen = torch.Generator(device=device).manual_seed(args.seed)
        x_all = torch.randn(max_tokens, p["hidden"], device=device, dtype=torch.bfloat16, generator=gen)
        logits_all = torch.randn(max_tokens, p["experts"], device=device, dtype=torch.float32, generator=gen)
        for tokens in args.tokens:
            x = x_all[:tokens].contiguous()
            logits = logits_all[:tokens].contiguous()
            _, idx = route(torch, logits, p["top_k"])
            touched = int(torch.unique(idx).numel())
            reference = None
            if block is not None:
                block.gate = FixedLogitsRouter(torch, logits, p["top_k"])
            for variant in variants:
                with_shared = variant == "hf-eager" or variant == "hf-grouped_mm" or variant.endswith("+shared")
                with_shared = with_shared and p["shared_inter"] > 0
                if variant.endswith("+shared") and p["shared_inter"] == 0:
                    continue
                if variant.startswith("hf-"):
                    if block is None:
                        continue
                    cfg._experts_implementation = variant[len("hf-"):]
                    x3 = x.unsqueeze(0)
                    fn = lambda: block(x3)  # noqa: E731
                else:
                    sh = shared if variant.endswith("+shared") else None
                    fn = lambda sh=sh: grouped_mm_moe(torch, gmm, x, logits, gate_up, down, p["top_k"], sh)  # noqa: E731
                try:
                    with torch.no_grad():
                        y = fn().reshape(tokens, -1)
                        ms, min_ms, n = time_cuda(torch, fn, args.warmup, args.repeats)
                except Exception as e:  # noqa: BLE001 - report and go on with the other rows
                    warn(f"{name} T={tokens} {variant}: {type(e).__name__}: {e}")
                    emit({"kind": "error", "preset": name, "tokens": tokens, "variant": variant, "error": f"{type(e).__name__}: {e}"})
                    continue
                # Every variant with the same experts must agree: compare with the first one.
                key = with_shared
                check = None
                if reference is None:
                    reference = {}
                if key in reference:
                    r = reference[key].float()
                    check = ((y.float() - r).norm() / r.norm().clamp_min(1e-30)).item()
                else:
                    reference[key] = y
                finite = bool(torch.isfinite(y).all().item())
                flop = routed_flops(p, tokens) + (shared_flops(p, tokens) if with_shared else 0.0)
                nbytes = touched * expert_bytes(p) + (shared_bytes(p) if with_shared else 0)
                fl = floor_ms(flop, nbytes, ceil)
                row = {
                    "kind": "row",
                    "source": "torch",
                    "preset": name,
                    "weights": "bf16",
                    "tokens": tokens,
                    "backend": variant,
                    "variant": variant,
                    "shared_expert": with_shared,
                    "median_ms": ms,
                    "min_ms": min_ms,
                    "repeats": n,
                    "gflop": flop / 1e9,
                    "weight_bytes": nbytes,
                    "experts_touched": touched,
                    "gflops": flop / (ms * 1e-3) / 1e9,
                    "weight_gbps": nbytes / (ms * 1e-3) / 1e9,
                    "card": ceil["card"],
                    "floor_ms": fl,
                    "ratio_to_floor": ms / fl,
                    "copy_gbps": ceil["copy_gbps"],
                    "matmul_tflops": ceil["matmul_tflops"],
                    "rel_l2_vs_first_variant": check,
                    "output_finite": finite,
                    "grouped_mm": gmm_name,
                    **versions,
                }
                emit(row)
                line = (
                    f"{name:<14} {variant:<24} {tokens:>5} {touched:>7} {ms:>10.3f} {fl:>9.3f} {ms / fl:>8.2f} "
                    f"{flop / (ms * 1e-3) / 1e12:>8.1f} {'-' if check is None else f'{check:.1e}':>9}"
                )
                if not finite:
                    line += "  NON-FINITE OUTPUT"
                rows_text.append(line)
                log(line)
                y = None
            reference = None
        # Free the preset's weights before the next one (DeepSeek-V3 alone is 22.5 GB).
        block = gate_up = down = shared = x_all = logits_all = fn = None
        gc.collect()
        torch.cuda.empty_cache()
    if out:
        out.close()
    log("")
    log("\n".join(rows_text))
    log("check: rel L2 against the first variant with the same experts (shared expert or not) at that T")


# ---------------------------------------------------------------------------------------------
# --summarize
# ---------------------------------------------------------------------------------------------


def read_jsonl(path):
    rows = []
    if not path or not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def summarize(bench_path, baseline_path):
    ours = [r for r in read_jsonl(bench_path) if "median_ms" in r and r.get("source") != "torch"]
    torch_rows = [r for r in read_jsonl(baseline_path) if r.get("kind") == "row"]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in torch_rows)]
    keys = []
    for r in ours:
        k = (r["preset"], r["weights"], r["tokens"])
        if k not in keys:
            keys.append(k)
    for r in torch_rows:
        k = (r["preset"], r["weights"], r["tokens"])
        if k not in keys:
            keys.append(k)
    if not keys:
        print("summary: no bench or baseline rows")
        return
    head = f"{'preset':<14} {'weights':<9} {'T':>5} {'moe ms':>9} {'floor ms':>9} {'x floor':>8} {'graph ms':>9} {'graph x floor':>13}"
    width = {v: max(10, len(v)) for v in variants}
    for v in variants:
        head += f" {v:>{width[v]}}"
    head += f" {'vs best torch':>14}"
    print(head)
    for preset, weights, tokens in keys:
        o = next((r for r in ours if (r["preset"], r["weights"], r["tokens"]) == (preset, weights, tokens)), None)
        line = f"{preset:<14} {weights:<9} {tokens:>5}"
        if o:
            line += f" {o['median_ms']:>9.3f} {o.get('floor_ms', float('nan')):>9.3f} {o.get('ratio_to_floor', float('nan')):>8.2f}"
            # The forward replayed as a CUDA graph (moe bench's graph_ms); '-' where it could
            # not be captured (graph_error) or the row predates graph timing.
            if "graph_ms" in o:
                line += f" {o['graph_ms']:>9.3f} {o.get('graph_ratio_to_floor', float('nan')):>13.2f}"
            else:
                line += f" {'-':>9} {'-':>13}"
        else:
            line += f" {'-':>9} {'-':>9} {'-':>8} {'-':>9} {'-':>13}"
        best = None
        for v in variants:
            t = next(
                (r for r in torch_rows if (r["preset"], r["weights"], r["tokens"], r["variant"]) == (preset, weights, tokens, v)),
                None,
            )
            if t:
                line += f" {t['median_ms']:>{width[v]}.3f}"
                # Only variants computing what the moe layer computes (no shared expert) compare.
                if not t.get("shared_expert"):
                    best = t["median_ms"] if best is None else min(best, t["median_ms"])
            else:
                line += f" {'-':>{width[v]}}"
        if o and best:
            line += f" {best / o['median_ms']:>13.2f}x"
        else:
            line += f" {'-':>14}"
        print(line)
    print("vs best torch: fastest torch variant without a shared expert / moe (above 1: moe is faster)")
    print("graph ms: the moe forward captured once into a CUDA graph and replayed (no host launch latency)")
    for o in ours:
        if o.get("graph_error"):
            print(f"graph capture failed for {o['preset']} {o['weights']} T={o['tokens']}: {o['graph_error']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default=",".join(DEFAULT_PRESETS), help="comma-separated: " + ", ".join(PRESETS))
    ap.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)), help="comma-separated token counts")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copy-mib", type=int, default=1024)
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--out", help="JSON lines written here")
    ap.add_argument("--summarize", nargs=2, metavar=("BENCH_JSONL", "BASELINE_JSONL"),
                    help="print moe bench rows next to the baseline rows and exit (no torch needed)")
    args = ap.parse_args(argv)
    if args.summarize:
        summarize(*args.summarize)
        return 0
    args.presets = [p for p in args.presets.split(",") if p]
    for p in args.presets:
        if p not in PRESETS:
            raise SystemExit(f"unknown preset {p} (known: {', '.join(PRESETS)})")
    args.tokens = [int(t) for t in args.tokens.split(",") if t]
    if not args.tokens or min(args.tokens) < 1:
        raise SystemExit("--tokens needs positive counts")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
