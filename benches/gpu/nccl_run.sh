#!/usr/bin/env bash
# The NCCL leg on the GPU machine, in one command: every collective and strategy of `NcclGroup`
# (`nccl-exchange`: checks, bandwidth, a stalled and a dead rank), PyTorch's all_to_all_single of
# the same bytes in the same run (`nccl_alltoall_baseline.py`), the bandwidth ratio against the
# 70% bar, and the layer over NCCL against a single GPU (`nccl-layer`).
#
# Build the bundle here (release, feature `nccl`, no CUDA toolkit needed), from the checkout root:
#   bash benches/gpu/build_nccl_bundle.sh        # = the two commands below, then copies
#   cargo build --release -p moe-comm --features nccl --example nccl-exchange
#   cargo build --release -p moe --features nccl --example nccl-layer
#   mkdir -p target/nccl-bundle && cp target/release/examples/nccl-{exchange,layer} tools/gpu/gpu-env.sh target/nccl-bundle/
# and run on the GPU machine: bash benches/gpu/nccl_run.sh target/nccl-bundle 2
#
# usage: benches/gpu/nccl_run.sh BIN_DIR [WORLD] [OUT_DIR]
#   BIN_DIR  holds the release binaries `nccl-exchange` and `nccl-layer`; gpu-env.sh is taken
#            from BIN_DIR, its parent (the gpu-bundle layout) or tools/gpu/ of the checkout
#   WORLD    ranks (default: the visible GPUs, at most 4)
#   OUT_DIR  logs (default: $OUT, else /tmp/nccl-run)
# environment (quick iterations): NCCL_RUN_STAGES=bandwidth passes `--stages` to nccl-exchange;
#   NCCL_RUN_LAYER=0 skips nccl-layer. A run that skips anything is not a full check.
#   MOE_NCCL_DATA_PLANE=nonblocking runs everything on the non-blocking communicator only (no
#   blocking data plane); by default the bandwidth stage measures both data planes side by side.
set -uo pipefail
BIN=${1:?usage: $0 BIN_DIR [WORLD] [OUT_DIR]}
HERE=$(cd "$(dirname "$0")" && pwd)
OUTDIR=${3:-${OUT:-/tmp/nccl-run}}
mkdir -p "$OUTDIR"
for f in "$BIN/gpu-env.sh" "$BIN/../gpu-env.sh" "$HERE/gpu-env.sh" "$HERE/../../tools/gpu/gpu-env.sh"; do
  if [ -f "$f" ]; then source "$f"; break; fi
done
# cudarc opens `libnccl.so`; the NCCL wheel ships only `libnccl.so.2`: link it when needed.
if ! python3 -c 'import ctypes; ctypes.CDLL("libnccl.so")' 2>/dev/null; then
  IFS=: read -ra dirs <<< "${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}"; do
    if [ -f "$d/libnccl.so.2" ]; then
      mkdir -p /tmp/nccl-link && ln -sf "$d/libnccl.so.2" /tmp/nccl-link/libnccl.so
      export LD_LIBRARY_PATH="/tmp/nccl-link:$LD_LIBRARY_PATH"
      break
    fi
  done
fi
# NVLink multicast stays off (the machine's setting; never enabled here).
export NCCL_NVLS_ENABLE=0
WORLD=${2:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$WORLD" -gt 4 ] && WORLD=4
if [ "$WORLD" -lt 2 ]; then echo "need at least 2 GPUs (found $WORLD)"; exit 1; fi
echo "== NCCL leg: $WORLD ranks, $(nvidia-smi -L | head -1)"
status=0

"$BIN/nccl-exchange" --world "$WORLD" ${NCCL_RUN_STAGES:+--stages "$NCCL_RUN_STAGES"} --timeout-s "${NCCL_RUN_TIMEOUT_S:-240}" --json 2>&1 | tee "$OUTDIR/nccl_exchange.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

BYTES=$(python3 - "$OUTDIR/nccl_exchange.log" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"stage":"bandwidth"')]
print(sum(r["bytes"] for r in rows) // len(rows) if rows else 0)
PY
)
if [ "$BYTES" -gt 0 ]; then
  PYTHONUNBUFFERED=1 python3 "$HERE/nccl_alltoall_baseline.py" --world "$WORLD" --bytes-per-rank "$BYTES" --json 2>&1 \
    | tee "$OUTDIR/torch_alltoall.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  python3 - "$OUTDIR/nccl_exchange.log" "$OUTDIR/torch_alltoall.log" <<'PY' || status=1
import json, sys
def rows(path, stage):
    # Ranks print concurrently, so one line may hold several objects (or start mid-line):
    # decode every object that names the stage, wherever it starts.
    text, dec, out, i = open(path).read(), json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) >= 0:
        try:
            obj, end = dec.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict) and obj.get("stage") == stage:
            out.append(obj)
        i = end
    return out
ours, torch = rows(sys.argv[1], "bandwidth"), rows(sys.argv[2], "torch_alltoall")
variants = rows(sys.argv[1], "bandwidth_variant")
if not ours or not torch:
    print("bandwidth comparison: missing results"); sys.exit(1)
mean = lambda v: sum(v) / len(v)
med = lambda v: sorted(v)[len(v) // 2]
tmean = mean([r["gbps"] for r in torch])
tms = mean([r["ms"] for r in torch])
print("\n== every strategy and data plane (mean over ranks; auto's choice first; ratio vs torch is the issue-4 bar;")
print("   both strategies measured by the all-to-all's bytes)")
print("%-22s %9s %9s %9s %9s %9s %9s %10s %10s  %s" % ("strategy/data plane", "total ms", "disp ms", "comb ms", "ours GB/s", "raw GB/s", "torch ms", "vs torch", "vs raw", "result"))
run_of = lambda r: (r.get("strategy", "alltoall"), r.get("data_plane", "?"))
for r0 in [ours[0]] + [v for v in variants if v["rank"] == 0]:
    strategy, plane = run_of(r0)
    rs = [r for r in ours + variants if run_of(r) == (strategy, plane)]
    g = mean([r["gbps"] for r in rs])
    vt = g / tmean
    vr = mean([r["ratio"] for r in rs])
    ok = vt >= 0.7 and all(r["correct"] for r in rs)
    print("%-22s %9.3f %9.3f %9.3f %9.1f %9.1f %9.3f %9.0f%% %9.0f%%  %s" % (strategy + "/" + plane, mean([r["total_ms"] for r in rs]),
          mean([r["dispatch_ms"] for r in rs]), mean([r["combine_ms"] for r in rs]), g, mean([r["ref_gbps"] for r in rs]),
          tms, 100 * vt, 100 * vr, ("PASS" if ok else "FAIL") + ("" if all(r["correct"] for r in rs) else " (WRONG OUTPUT)")))
    for key, title in (("latency_ms", "latency probes"), ("phases_ms", "phases (synchronised at each boundary)")):
        names = list(rs[0].get(key, {}).keys())
        if names:
            print("  %-40s %s" % (title + ", ms:", "  ".join("%s %.3f" % (n, mean([r[key].get(n, float("nan")) for r in rs])) for n in names)))
    print(json.dumps({"stage": "data_plane_vs_torch", "strategy": strategy, "data_plane": plane, "world": len(rs), "total_ms": round(mean([r["total_ms"] for r in rs]), 4),
                      "ours_gbps": round(g, 3), "torch_gbps": round(tmean, 3), "ratio_vs_torch": round(vt, 4), "ratio_vs_raw": round(vr, 4),
                      "latency_ms": {n: round(mean([r["latency_ms"][n] for r in rs]), 4) for n in rs[0].get("latency_ms", {})},
                      "phases_ms": {n: round(mean([r["phases_ms"][n] for r in rs]), 4) for n in rs[0].get("phases_ms", {})},
                      "pass": ok}))
print("\n== auto's strategy (%s) on the default data plane (%s): per rank" % run_of(ours[0]))
print("\n== dispatch+combine vs NCCL all-to-all (GB/s sent per rank, same GPUs, same run)")
print("%-5s %12s %12s %12s %14s" % ("rank", "ours", "raw ours", "torch", "ours/torch"))
t_by_rank = {r["rank"]: r for r in torch}
for r in sorted(ours, key=lambda r: r["rank"]):
    t = t_by_rank.get(r["rank"], {}).get("gbps", float("nan"))
    print("%-5d %12.1f %12.1f %12.1f %13.0f%%" % (r["rank"], r["gbps"], r["ref_gbps"], t, 100 * r["gbps"] / t))
ratio = mean([r["gbps"] for r in ours]) / mean([r["gbps"] for r in torch])
print(json.dumps({"stage": "bandwidth_vs_torch", "strategy": run_of(ours[0])[0], "world": len(ours), "device": ours[0].get("device"),
                  "ours_gbps": round(mean([r["gbps"] for r in ours]), 3),
                  "raw_gbps": round(mean([r["ref_gbps"] for r in ours]), 3),
                  "torch_gbps": round(mean([r["gbps"] for r in torch]), 3),
                  "ratio": round(ratio, 4), "pass": ratio >= 0.7}))
print("ratio %.0f%% of torch's all_to_all_single (need 70%%): %s" % (100 * ratio, "PASS" if ratio >= 0.7 else "FAIL"))
sys.exit(0 if ratio >= 0.7 else 1)
PY
else
  echo "no bandwidth result from nccl-exchange"; status=1
fi

if [ "${NCCL_RUN_LAYER:-1}" != 0 ]; then
  "$BIN/nccl-layer" --world "$WORLD" 2>&1 | tee "$OUTDIR/nccl_layer.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

echo "== NCCL leg: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
