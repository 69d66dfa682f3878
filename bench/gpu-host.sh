#!/bin/sh
# bench/gpu-host.sh — the runs made on the GPU test machine's host CPU (Intel
# Emerald Rapids, 16 vCPUs, AVX-512, one NUMA node), which has none of our
# Debian libraries: programs are built on a Debian machine and packed into
# PACK with the golden cases by bench/pack-gpu-host.sh, and this script runs
# there from the repository root:
#
#   PACK=gpu-pack OUT=out bench/gpu-host.sh [suite] [forward] [torch] [scaling]
#                                           [groups] [decode] [backward] [fast] [amx] [ab]
#
# suite    the test programs once per ISA the host supports (avx512 too)
# forward  nsa-bench kernels; nsa-bench forward at 32K and 64K, G=16, 16 threads
# fast     the same forward runs without the (slow, already measured) OpenBLAS row,
#          NSA and nsa_dense_forward in 2 alternating rounds (--rounds 2)
# torch    PyTorch's fp32 causal SDPA at the same sizes (torch must be there)
# scaling  NSA alone at 16K on 1, 2, 4, 8, 16 threads
# groups   NSA alone at 32K with G=1 and G=4, 16 threads
# decode   nsa-bench decode, 4K .. 128K, fp32 and bf16; PyTorch's bf16 decode
# backward nsa-bench backward at 32K and 64K
# amx      nsa-bench kernels; decode at 64K capped at avx512 and at amx, 3 rounds
# ab       the benchmarks named in AB (default "nsa-bench"; variants from
#          VARIANT=... bench/pack-gpu-host.sh), NSA alone at AB_SEQLENS (32K and
#          64K) on AB_THREADS (16), each phase timed (NSA_VERBOSE), in AB_ROUNDS
#          (3) alternating rounds
set -u
PACK=${PACK:-gpu-pack}
OUT=${OUT:-.}
mkdir -p "$OUT"
run() { "$PACK/run" "$@"; }
lscpu >"$OUT/lscpu.txt" 2>&1

for part in "$@"; do
    case $part in
    suite)
        for isa in $(run isa-list); do
            for t in test_api test_backward test_decode test_forward test_golden test_placement \
                     test_properties test_select test_ukernels decode quickstart; do
                NSA_GOLDEN_DIR="$PACK/golden" NSA_MAX_ISA=$isa run "$t" >"$OUT/suite-$isa-$t.log" 2>&1
                echo "suite: NSA_MAX_ISA=$isa $t rc=$?"
            done
        done
        ;;
    forward)
        run nsa-bench kernels --json >"$OUT/kernels.jsonl" 2>"$OUT/kernels.txt"
        cat "$OUT/kernels.txt"
        for n in 32768 65536; do
            run nsa-bench forward --seqlen $n --threads 16 --repeats 2 --json \
                >"$OUT/forward-$n.jsonl" 2>"$OUT/forward-$n.txt"
            cat "$OUT/forward-$n.txt"
        done
        ;;
    torch)
        python3 bench/torch_sdpa.py --threads 16 --seqlen 32768 65536 --repeats 2 \
            >"$OUT/torch.jsonl" 2>&1
        cat "$OUT/torch.jsonl"
        ;;
    fast)
        for n in 32768 65536; do
            run nsa-bench forward --seqlen $n --threads 16 --repeats 2 --rounds 2 --no-blas --json \
                >"$OUT/fast-$n.jsonl" 2>"$OUT/fast-$n.txt"
            cat "$OUT/fast-$n.txt"
        done
        ;;
    decode)
        run nsa-bench decode --sweep --sweep-max 131072 --threads 16 --repeats 20 --json \
            >"$OUT/decode.jsonl" 2>"$OUT/decode.txt"
        cat "$OUT/decode.txt"
        python3 bench/torch_decode.py --threads 16 --context 4096 16384 65536 131072 \
            >"$OUT/torch-decode.jsonl" 2>&1
        cat "$OUT/torch-decode.jsonl"
        ;;
    amx)
        run nsa-bench kernels --json >"$OUT/kernels.jsonl" 2>"$OUT/kernels.txt"
        grep -E 'bf16|peak' "$OUT/kernels.txt"
        for round in 1 2 3; do
            for isa in avx512 amx; do
                run nsa-bench decode --context 65536 --threads 16 --repeats 30 --isa $isa --json \
                    >>"$OUT/amx-ab.jsonl" 2>>"$OUT/amx-ab.txt"
            done
        done
        grep -E '^ +65536' "$OUT/amx-ab.txt"
        ;;
    backward)
        for n in 32768 65536; do
            run nsa-bench backward --seqlen $n --threads 16 --repeats 1 --json \
                >"$OUT/backward-$n.jsonl" 2>"$OUT/backward-$n.txt"
            cat "$OUT/backward-$n.txt"
        done
        ;;
    ab)
        for round in $(seq 1 "${AB_ROUNDS:-3}"); do
            for n in ${AB_SEQLENS:-32768 65536}; do
                for prog in ${AB:-nsa-bench}; do
                    echo "== round $round, $prog, N = $n" >>"$OUT/ab.txt"
                    NSA_VERBOSE=1 run "$prog" forward --seqlen $n --threads "${AB_THREADS:-16}" --repeats 2 \
                        --no-dense --no-blas --no-dnnl --no-machine 2>&1 |
                        grep -E 'forward of|NSA forward' >>"$OUT/ab.txt"
                done
            done
        done
        cat "$OUT/ab.txt"
        ;;
    scaling)
        for t in 1 2 4 8 16; do
            run nsa-bench forward --seqlen 16384 --threads $t --repeats 2 --no-dense --no-blas \
                --no-dnnl --json >>"$OUT/scaling.jsonl" 2>>"$OUT/scaling.txt"
        done
        cat "$OUT/scaling.jsonl"
        ;;
    groups)
        for kv in 16 4; do
            run nsa-bench forward --seqlen 32768 --kv-heads $kv --threads 16 --repeats 2 \
                --no-dense --no-blas --no-dnnl --json >>"$OUT/groups.jsonl" 2>>"$OUT/groups.txt"
        done
        cat "$OUT/groups.txt"
        ;;
    esac
done
