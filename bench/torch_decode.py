#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""torch_decode.py -- PyTorch's number for one decode step, to read
`nsa-bench decode` against: torch.nn.functional.scaled_dot_product_attention
of one new query (B=1, Hq heads, head dim D) against a cache of N keys and
values (Hkv heads; GQA through enable_gqa), on the CPU, with
torch.set_num_threads(T). One warm-up call, then the best of --repeats.
Prints one JSON object per context:

    {"context": N, "torch_decode_us": ..., "dtype": "bfloat16", "threads": T, ...}

Usage: python3 bench/torch_decode.py --threads 16 --context 4096 65536 131072
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, nargs="+", default=[65536])
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--q-heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    for n in args.context:
        gen = torch.Generator().manual_seed(1)
        q = torch.rand(1, args.q_heads, 1, args.dim, generator=gen).to(dtype) * 2 - 1
        k = torch.rand(1, args.kv_heads, n, args.dim, generator=gen).to(dtype) * 2 - 1
        v = torch.rand(1, args.kv_heads, n, args.dim, generator=gen).to(dtype) * 2 - 1
        gqa = args.kv_heads != args.q_heads
        F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
            best = min(best, time.perf_counter() - start)
        print(json.dumps({"context": n, "torch_decode_us": round(best * 1e6, 2),
                          "dtype": args.dtype, "threads": args.threads,
                          "q_heads": args.q_heads, "kv_heads": args.kv_heads, "dim": args.dim,
                          "stat": "best", "repeats": args.repeats,
                          "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
