#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""torch_sdpa.py -- the PyTorch number nsa-bench's dense rows are read against.

Times torch.nn.functional.scaled_dot_product_attention, fp32, causal, on the
CPU, for the shapes `nsa-bench forward` runs (B=1, Hq query heads, Hkv KV
heads, N tokens, head dims Dk/Dv; GQA through enable_gqa=True when
Hkv < Hq), with torch.set_num_threads(T). It is what a PyTorch user gets on
a CPU without a fused NSA kernel (PyTorch's CPU flash-attention kernel).
Meant for a host with torch (2.x; no network needed); prints one JSON
object per size and thread count on one line:

    {"seqlen": N, "torch_sdpa_ms": ..., "threads": T, ...}

Timing follows nsa-bench: one warm-up call, then the best (or --median) of
--repeats calls. Usage:

    python3 bench/torch_sdpa.py --threads 16 --seqlen 8192 16384
    python3 bench/torch_sdpa.py --threads 1 2 --sweep --sweep-max 16384
"""
import argparse
import json
import statistics
import sys
import time


def parse_size(text):
    text = text.strip().lower()
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlen", type=parse_size, nargs="+", default=[8192])
    ap.add_argument("--sweep", action="store_true", help="N = 1K, 2K, ... up to --sweep-max")
    ap.add_argument("--sweep-min", type=parse_size, default=1024)
    ap.add_argument("--sweep-max", type=parse_size, default=65536)
    ap.add_argument("--q-heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=1)
    ap.add_argument("--dim-qk", type=int, default=128)
    ap.add_argument("--dim-v", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[0],
                    help="0 = torch's default (one per core)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--median", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.q_heads % args.kv_heads:
        sys.exit("torch_sdpa.py: --q-heads must be a multiple of --kv-heads")

    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        sys.exit("torch_sdpa.py: torch is not installed here; run it on a host with torch")

    sizes = args.seqlen
    if args.sweep:
        sizes, n = [], args.sweep_min
        while n <= args.sweep_max:
            sizes.append(n)
            n *= 2
    dtype = getattr(torch, args.dtype)
    gqa = args.kv_heads < args.q_heads
    default_threads = torch.get_num_threads()

    for threads in args.threads:
        t = threads if threads > 0 else default_threads
        torch.set_num_threads(t)
        for n in sizes:
            gen = torch.Generator().manual_seed(args.seed)
            # [B, H, N, D], values in [-1, 1) as nsa-bench draws them
            q = torch.rand(1, args.q_heads, n, args.dim_qk, generator=gen) * 2 - 1
            k = torch.rand(1, args.kv_heads, n, args.dim_qk, generator=gen) * 2 - 1
            v = torch.rand(1, args.kv_heads, n, args.dim_v, generator=gen) * 2 - 1
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            kwargs = {"is_causal": True}
            if gqa:
                kwargs["enable_gqa"] = True

            def call():
                with torch.no_grad():
                    return F.scaled_dot_product_attention(q, k, v, **kwargs)

            call()  # warm-up
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                call()
                runs.append(time.perf_counter() - start)
            sec = statistics.median(runs) if args.median else min(runs)
            # Useful FLOPs as nsa-bench counts dense causal attention:
            # 2 (Dk + Dv) per query head and key attended, keys 0..t.
            flops = 2.0 * (args.dim_qk + args.dim_v) * args.q_heads * n * (n + 1) / 2
            print(json.dumps({
                "seqlen": n,
                "torch_sdpa_ms": round(sec * 1e3, 3),
                "threads": t,
                "gflops": round(flops / sec * 1e-9, 2),
                "q_heads": args.q_heads, "kv_heads": args.kv_heads,
                "dim_qk": args.dim_qk, "dim_v": args.dim_v,
                "dtype": args.dtype, "stat": "median" if args.median else "best",
                "repeats": args.repeats, "torch": torch.__version__,
            }), flush=True)
            del q, k, v
    return 0


if __name__ == "__main__":
    sys.exit(main())
