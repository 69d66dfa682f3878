#!/bin/sh
# one device call (bench/gpu-host.sh): the suite at amx (the new windows-
# on-tiles path runs only there) and avx512, then the A/B of whole builds
# (NSA alone), then NSA vs dense. Few files come back from the device, so
# each part's files are gathered into one.
set -u
export PACK=gpu-pack
w=$(mktemp -d)
{ nproc; lscpu; } > "$OUT/lscpu.txt" 2>&1
for isa in amx avx512; do
  for t in test_forward test_golden test_properties test_api test_decode test_placement \
           test_select test_ukernels decode quickstart test_backward; do
    NSA_GOLDEN_DIR="$PACK/golden" NSA_MAX_ISA=$isa timeout 30 "$PACK/run" "$t" >"$w/suite-$isa-$t.log" 2>&1
    echo "suite: NSA_MAX_ISA=$isa $t rc=$? $(date +%T)" >> "$OUT/suite.txt"
  done
done
for f in "$w"/suite-*.log; do echo "=== $f"; tail -n 5 "$f"; done > "$OUT/suite-tails.txt"
echo "suite done $(date +%T)" >> "$OUT/progress.txt"
AB="nsa-bench nsa-bench-fmawin nsa-bench-rows1024" AB_ROUNDS=2 \
    timeout "${AB_SECONDS:-150}" sh bench/gpu-host.sh ab > /dev/null 2>&1
echo "ab done $(date +%T)" >> "$OUT/progress.txt"
[ "${FAST:-1}" = 0 ] && exit 0
OUT=$w/fast timeout 150 sh bench/gpu-host.sh fast > "$OUT/main.txt" 2>&1
echo "fast done $(date +%T)" >> "$OUT/progress.txt"
cat "$w"/fast/*.jsonl > "$OUT/all.jsonl" 2>/dev/null
