#!/bin/sh
# bench/pack-gpu-host.sh — builds a clean copy of this checkout (committed
# files plus uncommitted changes to tracked files) without oneDNN (its
# library is too large to carry) and packs the benchmark, the demo, the test
# programs and the golden cases into PACK (default gpu-pack, git-ignored),
# ready to carry to the GPU test machine and run with bench/gpu-host.sh:
#
#   sh bench/pack-gpu-host.sh [PACK]
#   (device) PACK=gpu-pack OUT=$OUT sh bench/gpu-host.sh suite fast decode ...
#
# A variant for an A/B of whole builds: with VARIANT=NAME and configure
# arguments after PACK, only the benchmark is built, with those arguments,
# and added to an existing PACK as bin/nsa-bench-NAME (it links libnsa
# statically, so it carries its own library code):
#
#   VARIANT=rows1024 sh bench/pack-gpu-host.sh gpu-pack CPPFLAGS=-DNSA_SELECTED_CHUNK_ROWS=1024
#   (device) PACK=gpu-pack AB="nsa-bench nsa-bench-rows1024" OUT=$OUT sh bench/gpu-host.sh ab
#
# Needs the build dependencies (.ci/deps) and ../shared/tools/pack-for-gpu-host.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
pack=$(cd "$top" && mkdir -p "${1:-gpu-pack}" && cd "${1:-gpu-pack}" && pwd)
if [ $# -gt 0 ]; then shift; fi
variant=${VARIANT:-}
if [ -n "$variant" ] && [ ! -x "$pack/run" ]; then
    echo "pack-gpu-host.sh: VARIANT needs an existing pack in $pack" >&2
    exit 1
fi
tool="$top/../shared/tools/pack-for-gpu-host"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$top" "$work/src"
(cd "$top" && git diff) | (cd "$work/src" && git apply --allow-empty)
cd "$work/src"
./autogen.sh >/dev/null 2>&1
mkdir _build && cd _build
log="$work/build.log"
targets=${variant:+bench/nsa-bench} # a variant: the benchmark alone
{ ../configure --without-dnnl "$@" && make -j"$(nproc)" $targets &&
    { [ -n "$variant" ] || make -j"$(nproc)" check TESTS=; }; } \
    >"$log" 2>&1 || { tail -n 40 "$log"; exit 1; }
if [ -n "$variant" ]; then
    cp bench/nsa-bench "$pack/bin/nsa-bench-$variant"
    strip --strip-debug "$pack/bin/nsa-bench-$variant" # the carry limit is 64 MiB
    echo "added $pack/bin/nsa-bench-$variant (configure $*)"
    exit 0
fi
rm -rf "$pack/bin" "$pack/lib" "$pack/run"
"$tool" "$pack" bench/nsa-bench bench/nsa-demo tests/isa-list tests/test_api tests/test_backward \
    tests/test_decode tests/test_forward tests/test_golden tests/test_placement \
    tests/test_properties tests/test_select tests/test_ukernels examples/decode \
    examples/quickstart >/dev/null
cp -L src/.libs/libnsa.so.0 "$pack/lib/" 2>/dev/null || cp -L .libs/libnsa.so.0 "$pack/lib/"
# without debug sections: ~8 MB less, room for variants under the 64 MiB carry limit
strip --strip-debug "$pack"/bin/* "$pack/lib/libnsa.so.0"
rm -rf "$pack/golden"
cp -r "$top/../shared/golden" "$pack/golden"
echo "packed into $pack: $(du -sh "$pack" | cut -f1)"
