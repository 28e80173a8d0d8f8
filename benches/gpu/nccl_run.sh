#!/usr/bin/env bash
# The NCCL leg on the GPU machine, in one command: every collective and strategy of `NcclGroup`
# (`nccl-exchange`: checks, bandwidth, a stalled and a dead rank), PyTorch's all_to_all_single of
# the same bytes in the same run (`nccl_alltoall_baseline.py`), the bandwidth ratio against the
# 70% bar, and the layer over NCCL against a single GPU (`nccl-layer`).
#
# usage: benches/gpu/nccl_run.sh BIN_DIR [WORLD] [OUT_DIR]
#   BIN_DIR  holds the release binaries `nccl-exchange` and `nccl-layer`; gpu-env.sh is taken
#            from BIN_DIR, its parent (the gpu-bundle layout) or tools/gpu/ of the checkout
#   WORLD    ranks (default: the visible GPUs, at most 4)
#   OUT_DIR  logs (default: $OUT, else /tmp/nccl-run)
# environment (quick iterations): NCCL_RUN_STAGES=bandwidth passes `--stages` to nccl-exchange;
#   NCCL_RUN_LAYER=0 skips nccl-layer. A run that skips anything is not a full check.
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

"$BIN/nccl-exchange" --world "$WORLD" ${NCCL_RUN_STAGES:+--stages "$NCCL_RUN_STAGES"} --json 2>&1 | tee "$OUTDIR/nccl_exchange.log"
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
if not ours or not torch:
    print("bandwidth comparison: missing results"); sys.exit(1)
mean = lambda v: sum(v) / len(v)
print("\n== dispatch+combine vs NCCL all-to-all (GB/s sent per rank, same GPUs, same run)")
print("%-5s %12s %12s %12s %14s" % ("rank", "ours", "raw ours", "torch", "ours/torch"))
t_by_rank = {r["rank"]: r for r in torch}
for r in sorted(ours, key=lambda r: r["rank"]):
    t = t_by_rank.get(r["rank"], {}).get("gbps", float("nan"))
    print("%-5d %12.1f %12.1f %12.1f %13.0f%%" % (r["rank"], r["gbps"], r["ref_gbps"], t, 100 * r["gbps"] / t))
ratio = mean([r["gbps"] for r in ours]) / mean([r["gbps"] for r in torch])
print(json.dumps({"stage": "bandwidth_vs_torch", "world": len(ours), "device": ours[0].get("device"),
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
