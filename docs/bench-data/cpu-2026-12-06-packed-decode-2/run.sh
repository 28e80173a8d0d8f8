#!/bin/bash
# Rounds (ROUNDS, default "1 2"); in each, for both ISA paths, both presets and every format: the before binary,
# then the after one; then candle's 4-bit peer (Q4_0 and Q4K) on the same presets.
# Binaries: /tmp/pk2_moe_before, /tmp/pk2_moe_after, /tmp/pk2_candle_peer (see README.md).
D=/work/main/docs/bench-data/cpu-2026-12-06-packed-decode-2
C=/tmp/pk2_cache
cd /work/main
stamp() { echo "# $(date -u +%FT%TZ) MOE_CPU_ISA=${MOE_CPU_ISA:-unset} load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
for round in ${ROUNDS:-1 2}; do
  for preset in qwen3-30b-a3b mixtral-8x7b; do
    if [ $preset = qwen3-30b-a3b ]; then rep=7; crow=1:15,8:7; else rep=3; crow=1:5,8:3; fi
    for isa in default avx2; do
      for w in int4 nvfp4 mxfp4 int8; do
        for b in before after; do
          if [ $isa = avx2 ]; then export MOE_CPU_ISA=avx2; else unset MOE_CPU_ISA; fi
          f=$D/$preset-$b-$w-$isa-r$round.txt
          stamp > $f
          /tmp/pk2_moe_$b bench --preset $preset --weights $w --tokens 1,8 --repeats $rep --cache-dir $C >> $f 2>&1
        done
      done
    done
    unset MOE_CPU_ISA
    for q in q4_0 q4k; do
      f=$D/$preset-candle-$q-r$round.jsonl
      stamp > ${f%.jsonl}.txt
      /tmp/pk2_candle_peer --cache $C/$preset-int4-seed0-v1 --rows $crow --q4 $q > $f 2>> ${f%.jsonl}.txt
    done
  done
done
echo done
