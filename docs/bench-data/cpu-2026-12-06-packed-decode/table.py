import json, glob, os, collections
import sys; D=sys.argv[1] if len(sys.argv) > 1 else 'docs/bench-data/cpu-2026-12-06-packed-decode'
rows=collections.defaultdict(list)
for f in sorted(glob.glob(D+'/*.jsonl')):
    parts=os.path.basename(f)[:-6].split('-')
    b=parts[0]; isa=parts[-2]; w='-'.join(parts[1:-2])
    for line in open(f):
        if line.startswith('{'):
            j=json.loads(line); rows[(w, isa, j['tokens'], b)].append(j)
names={'int4':'INT4 (AWQ g128, zero points)','int8':'INT8 (per channel)','nvfp4':'NVFP4','mxfp4':'MXFP4','fp8-block':'FP8 block 128x128'}
print('| weights | path | T | before ms | before GB/s | after ms | after GB/s | after, % of the run\'s read BW | after, % of 44.5 (best ceiling of the session) | speedup |')
print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
for w in ['int4','int8','nvfp4','mxfp4','fp8-block']:
    for isa in ['default','avx2']:
        for t in [1,8]:
            best=lambda b: max(rows[(w,isa,t,b)], key=lambda j: j['read_ratio'])
            bb, aa = best('before'), best('after')
            p = 'AVX-512' if isa=='default' else 'AVX2'
            print(f"| {names[w]} | {p} | {t} | {bb['median_ms']:.2f} | {bb['weight_gbps']:.1f} ({100*bb['read_ratio']:.0f}%) | {aa['median_ms']:.2f} | {aa['weight_gbps']:.1f} | **{100*aa['read_ratio']:.0f}%** of {aa['read_ceiling_gbps']:.1f} | {100*aa['weight_gbps']/44.5:.0f}% | {bb['median_ms']/aa['median_ms']:.1f}x |")
