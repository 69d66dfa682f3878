#!/bin/sh
# one device call: the host runs of this session (see bench/gpu-host.sh)
set -u
export PACK=gpu-pack
nproc > "$OUT/nproc.txt"
sh bench/gpu-host.sh fast torch > "$OUT/main.txt" 2>&1
echo "fast+torch done $(date +%T)" >> "$OUT/main.txt"
mkdir -p "$OUT/dec" && OUT=$OUT/dec sh bench/gpu-host.sh decode > "$OUT/dec/decode-all.txt" 2>&1
echo "decode done $(date +%T)" >> "$OUT/main.txt"
sh bench/gpu-host.sh scaling groups >> "$OUT/main.txt" 2>&1
echo "scaling+groups done $(date +%T)" >> "$OUT/main.txt"
for isa in amx avx512; do
  for t in test_api test_decode test_forward test_golden test_placement test_properties test_select test_ukernels decode quickstart test_backward; do
    NSA_GOLDEN_DIR="$PACK/golden" NSA_MAX_ISA=$isa "$PACK/run" "$t" >"$OUT/suite-$isa-$t.log" 2>&1
    echo "suite: NSA_MAX_ISA=$isa $t rc=$? $(date +%T)" >> "$OUT/suite.txt"
  done
done
