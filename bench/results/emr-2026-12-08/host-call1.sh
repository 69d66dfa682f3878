#!/bin/sh
# one device call: the suite at amx (selected blocks on FMA and, for the
# forward tests, on tiles) and avx512; an A/B of the selected branch
# (NSA alone, phases timed); NSA vs dense with the winner; torch; decode.
# Few files come back from the device, so each part's files are gathered.
# The pack (commit 253c494 or later):
#   sh bench/pack-gpu-host.sh gpu-pack
#   VARIANT=pfs sh bench/pack-gpu-host.sh gpu-pack CPPFLAGS=-DNSA_SELECTED_PREFETCH_STATE=1
#   VARIANT=tnp sh bench/pack-gpu-host.sh gpu-pack CPPFLAGS=-DNSA_SELECTED_TILE_PREFETCH=0
#   VARIANT=r1024 sh bench/pack-gpu-host.sh gpu-pack CPPFLAGS=-DNSA_SELECTED_CHUNK_ROWS=1024
#   VARIANT=r2048 sh bench/pack-gpu-host.sh gpu-pack CPPFLAGS=-DNSA_SELECTED_CHUNK_ROWS=2048
#   (the packs are stripped of debug sections: 57 MB in all, under the carry limit)
# then run it with carry ["gpu-pack"] (FAST=0 stops after the A/B).
set -u
export PACK=gpu-pack
run() { "$PACK/run" "$@"; }
w=$(mktemp -d)
p() { echo "$* $(date +%T)" >> "$OUT/progress.txt"; }
{ nproc; lscpu; } > "$OUT/lscpu.txt" 2>&1
for isa in amx avx512; do
  for t in test_forward test_golden test_properties test_api test_decode test_placement \
           test_select test_ukernels decode quickstart test_backward; do
    NSA_GOLDEN_DIR="$PACK/golden" NSA_MAX_ISA=$isa timeout 30 run "$t" >"$w/suite-$isa-$t.log" 2>&1
    echo "suite: NSA_MAX_ISA=$isa $t rc=$?" >> "$OUT/suite.txt"
  done
done
for t in test_forward test_properties test_backward test_golden; do
  NSA_SELECTED_ON_TILES=1 NSA_GOLDEN_DIR="$PACK/golden" NSA_MAX_ISA=amx timeout 30 run "$t" >"$w/suite-tiles-$t.log" 2>&1
  echo "suite: NSA_SELECTED_ON_TILES=1 NSA_MAX_ISA=amx $t rc=$?" >> "$OUT/suite.txt"
done
for f in "$w"/suite-*.log; do echo "=== $f"; tail -n 3 "$f"; done > "$OUT/suite-tails.txt"
p suite done
# accuracy of the tiles path against nsa_dense_forward on the host's AMX
NSA_SELECTED_ON_TILES=1 run nsa-bench forward --seqlen 16384 --threads 16 --repeats 1 --no-blas \
    --no-dnnl --no-machine > "$OUT/ab.txt" 2>&1
p accuracy done
for round in 1 2; do
  for n in 32768 65536; do
    for cfg in base:nsa-bench:0 tiles:nsa-bench:1 pfs:nsa-bench-pfs:0 tilesnp:nsa-bench-tnp:1 \
               tiles1024:nsa-bench-r1024:1 r1024:nsa-bench-r1024:0 r2048:nsa-bench-r2048:0; do
      name=${cfg%%:*}; rest=${cfg#*:}; prog=${rest%%:*}; tiles=${rest#*:}
      echo "== round $round, $name ($prog, NSA_SELECTED_ON_TILES=$tiles), N = $n" >> "$OUT/ab.txt"
      NSA_SELECTED_ON_TILES=$tiles NSA_VERBOSE=1 timeout 60 run "$prog" forward --seqlen $n --threads 16 \
          --repeats 2 --no-dense --no-blas --no-dnnl --no-machine 2>&1 |
          grep -E 'forward of|NSA forward' >> "$OUT/ab.txt"
    done
  done
done
p ab done
[ "${FAST:-1}" = 0 ] && exit 0
for n in 32768 65536; do
  NSA_SELECTED_ON_TILES=${FAST_TILES:-1} timeout 100 run nsa-bench forward --seqlen $n --threads 16 \
      --repeats 2 --rounds 2 --no-blas --no-dnnl --json >> "$OUT/fast.txt" 2>&1
done
p fast done
timeout 60 python3 bench/torch_sdpa.py --threads 16 --seqlen 65536 --repeats 1 > "$OUT/torch.jsonl" 2>&1
p torch done
for round in 1 2 3; do
  timeout 30 run nsa-bench decode --context 65536 --threads 16 --repeats 30 --json >> "$OUT/decode.txt" 2>&1
done
p decode done
