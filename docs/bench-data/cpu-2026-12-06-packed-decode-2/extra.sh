#!/bin/bash
# When the host is idle: candle's 4-bit peer with more repeats, each next to our INT4 run.
D=/work/main/docs/bench-data/cpu-2026-12-06-packed-decode-2
C=/tmp/pk2_cache
idle() { read -r _ a b c d e f g _ < /proc/stat; t1=$((a+b+c+d+e+f+g)); i1=$d; sleep 3; read -r _ a b c d e f g _ < /proc/stat; t2=$((a+b+c+d+e+f+g)); i2=$d; echo $(( 100*(i2-i1)/(t2-t1) )); }
while [ $(date -u +%H%M) -lt 1740 ] && [ $(idle) -lt 85 ]; do :; done
stamp() { echo "# $(date -u +%FT%TZ) MOE_CPU_ISA=${MOE_CPU_ISA:-unset} load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
cd /work/main
for preset in qwen3-30b-a3b mixtral-8x7b; do
  if [ $preset = qwen3-30b-a3b ]; then crow=1:50,8:15; rep=25; else crow=1:10,8:5; rep=7; fi
  for q in q4k q4_0; do
    f=$D/$preset-candle-$q-extra.jsonl
    stamp > ${f%.jsonl}.txt
    /tmp/pk2_candle_peer --cache $C/$preset-int4-seed0-v1 --rows $crow --q4 $q > $f 2>> ${f%.jsonl}.txt
  done
  f=$D/$preset-after-int4-default-extra.txt
  stamp > $f
  /tmp/pk2_moe_after bench --preset $preset --weights int4 --tokens 1,8 --repeats $rep --cache-dir $C >> $f 2>&1
done
echo finished
