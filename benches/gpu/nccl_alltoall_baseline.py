#!/usr/bin/env python3
"""NCCL's own all-to-all bandwidth through PyTorch, the baseline of `nccl-exchange`'s bandwidth stage.

torch.distributed `all_to_all_single` of a bf16 tensor split equally over the ranks, with the same
byte volume per rank as one MoE dispatch+combine of `nccl-exchange` (4096 tokens x hidden 7168 bf16,
top-8 of 256 experts spread evenly over the ranks, random routing), timed with CUDA events around
each call after a barrier; the median over repeats after warm-up is reported per rank as algorithm
bandwidth (bytes sent per rank / time, the measure `nccl-exchange` prints) and bus bandwidth
(algbw * (N-1)/N, as nccl-tests prints it).

Launch with torchrun (`torchrun --nproc_per_node N nccl_alltoall_baseline.py`) or let it spawn its
own ranks (`python3 nccl_alltoall_baseline.py --world N`). Pass `--bytes-per-rank B` to use exactly
the volume `nccl-exchange --json` reported (its `"bytes"`), otherwise the expected volume of the
routing above is used. NCCL_NVLS_ENABLE and the rest of the environment are inherited.

Output: one human line per rank and, with --json, one JSON line per rank:
{"stage":"torch_alltoall","rank":r,"world":N,"bytes":B,"ms":t,"gbps":algbw,"busbw_gbps":busbw,...}
"""

import argparse
import json
import math
import os
import statistics
import sys
import tempfile


def expected_bytes(world, tokens, hidden, topk, experts):
    """Bytes one rank sends in a dispatch+combine of the AllToAll strategy, in expectation.

    A token goes once to every distinct rank owning one of its top-k experts: a rank owning
    experts/world experts is missed with probability C(E - E/N, k) / C(E, k). Dispatch rows carry
    hidden bf16 + k i32 slots + k f32 weights; combine sends hidden bf16 back per row.
    """
    per_rank = experts // world
    miss = math.comb(experts - per_rank, topk) / math.comb(experts, topk)
    rows = tokens * world * (1.0 - miss)
    return int(rows * (2 * hidden + 8 * topk) + rows * 2 * hidden)


def run(rank, world, args, init_method=None):
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank % torch.cuda.device_count())
    dev = torch.device("cuda", torch.cuda.current_device())
    if init_method is None:
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=world, device_id=dev)
    rank, world = dist.get_rank(), dist.get_world_size()

    nbytes = args.bytes_per_rank or expected_bytes(world, args.tokens, args.hidden, args.topk, args.experts)
    # bf16 elements, split equally: every rank sends numel / world to every rank.
    per_peer = max(1, math.ceil(nbytes / 2 / world))
    numel = per_peer * world
    inp = torch.randn(numel, dtype=torch.bfloat16, device=dev)
    out = torch.empty_like(inp)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(args.warmup + args.repeats):
        dist.barrier(device_ids=[dev.index])
        torch.cuda.synchronize()
        start.record()
        dist.all_to_all_single(out, inp)
        end.record()
        end.synchronize()
        if i >= args.warmup:
            times.append(start.elapsed_time(end))
    ms = statistics.median(times)
    sent = numel * 2
    gbps = sent / (ms * 1e-3) / 1e9
    busbw = gbps * (world - 1) / world
    name = torch.cuda.get_device_name(dev)
    print(
        f"rank {rank} of {world} ({name}): torch all_to_all_single {sent} B in {ms:.3f} ms: "
        f"{gbps:.1f} GB/s algbw, {busbw:.1f} GB/s busbw (nccl {'.'.join(map(str, torch.cuda.nccl.version()))}, "
        f"NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE', '(unset)')})",
        flush=True,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "stage": "torch_alltoall",
                    "rank": rank,
                    "world": world,
                    "bytes": sent,
                    "ms": round(ms, 4),
                    "gbps": round(gbps, 3),
                    "busbw_gbps": round(busbw, 3),
                    "device": name,
                    "nccl": ".".join(map(str, torch.cuda.nccl.version())),
                }
            ),
            flush=True,
        )
    dist.barrier(device_ids=[dev.index])
    dist.destroy_process_group()


def spawned(rank, world, args, init_file):
    run(rank, world, args, init_method=f"file://{init_file}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=0, help="spawn this many ranks (without torchrun)")
    p.add_argument("--bytes-per-rank", type=int, default=0)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        run(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), int(os.environ["WORLD_SIZE"]), args)
        return 0
    if args.world < 1:
        p.error("launch with torchrun, or pass --world N")
    import torch.multiprocessing as mp

    fd, init_file = tempfile.mkstemp(prefix="nccl_alltoall_baseline.")
    os.close(fd)
    os.unlink(init_file)
    try:
        mp.spawn(spawned, args=(args.world, args, init_file), nprocs=args.world, join=True)
    finally:
        if os.path.exists(init_file):
            os.unlink(init_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
