#!/bin/sh
# one device call (bench/gpu-host.sh): the windows-on-tiles A/B first, then
# the suite at amx and avx512, then NSA vs dense.
# Few files come back from the device, so each part's files are gathered
# into one.
set -u
export PACK=gpu-pack
w=$(mktemp -d)
{ nproc; lscpu; } > "$OUT/lscpu.txt" 2>&1
AB="nsa-bench nsa-bench-fmawin nsa-bench-rows1024" AB_ROUNDS=2 OUT=$w/ab \
    timeout 150 sh bench/gpu-host.sh ab > /dev/null 2>&1
cp "$w/ab/ab.txt" "$OUT/ab.txt"
echo "ab done $(date +%T)" > "$OUT/progress.txt"
for isa in amx avx512; do
  for t in test_api test_decode test_forward test_golden test_placement test_properties \
           test_select test_ukernels decode quickstart test_backward; do
    NSA_GOLDEN_DIR="$PACK/golden" NSA_MAX_ISA=$isa timeout 30 "$PACK/run" "$t" >"$w/suite-$isa-$t.log" 2>&1
    echo "suite: NSA_MAX_ISA=$isa $t rc=$? $(date +%T)" >> "$OUT/suite.txt"
  done
done
for f in "$w"/suite-*.log; do echo "=== $f"; tail -n 5 "$f"; done > "$OUT/suite-tails.txt"
echo "suite done $(date +%T)" >> "$OUT/progress.txt"
OUT=$w/fast timeout 150 sh bench/gpu-host.sh fast > "$OUT/main.txt" 2>&1
echo "fast done $(date +%T)" >> "$OUT/progress.txt"
cat "$w"/fast/*.jsonl > "$OUT/all.jsonl" 2>/dev/null
