#!/bin/bash
# Two rounds; in each, for both ISA paths and every format: the before binary, then the after one.
D=/work/main/docs/bench-data/cpu-2026-12-06-packed-decode
cd /work/main
for round in 1 2; do
  for isa in default avx2; do
    for w in int4 int8 nvfp4 mxfp4 fp8-block; do
      for b in before after; do
        if [ $isa = avx2 ]; then export MOE_CPU_ISA=avx2; else unset MOE_CPU_ISA; fi
        f=$D/$b-$w-$isa-r$round
        echo "# $(date -u +%FT%TZ) MOE_CPU_ISA=${MOE_CPU_ISA:-unset} load: $(cut -d' ' -f1-3 /proc/loadavg)" > $f.txt
        /tmp/pk_moe_$b bench --preset qwen3-30b-a3b --weights $w --tokens 1,8 --repeats 7 --json > $f.jsonl 2>> $f.txt
        /tmp/pk_moe_$b bench --preset qwen3-30b-a3b --weights $w --tokens 1,8 --repeats 7 >> $f.txt 2>&1
      done
    done
  done
done
echo done
