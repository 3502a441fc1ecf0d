#!/usr/bin/env bash
# Tests scripts/setup.sh's libclang detection against throwaway directory
# trees, so a look-alike such as libclang-cpp.so.14 (the C++ API library that
# Debian's fresh image ships, which bindgen cannot load) is never taken for
# libclang again. Run by scripts/test.sh before the cargo suite.
#
# Each case builds a tree, runs `setup.sh --check-libclang ROOT` (every search
# directory taken under ROOT, the environment ignored) or, for LIBCLANG_PATH,
# `setup.sh --check-libclang` with the variable set, and compares the verdict.
set -euo pipefail
cd "$(dirname "$0")/.."

setup=scripts/setup.sh
tmp=$(mktemp -d "${TMPDIR:-/tmp}/strata-test-setup.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0

# expect NAME WANT(present|missing) -- COMMAND...
expect() {
    local name=$1 want=$2
    shift 3
    local out verdict
    out=$("$@" 2>&1) && verdict=present || verdict=missing
    if [[ $verdict == "$want" && $out == "$want"* ]]; then
        printf 'test-setup: ok   %s: %s\n' "$name" "$out"
        passed=$((passed + 1))
    else
        printf 'test-setup: FAIL %s: wanted %s, setup said: %s\n' "$name" "$want" "$out"
        failed=$((failed + 1))
    fi
}

# tree NAME FILE... : a root holding exactly these (empty) files.
tree() {
    local root=$tmp/$1 f
    shift
    mkdir -p "$root"
    for f in "$@"; do
        mkdir -p "$root/$(dirname "$f")"
        : >"$root/$f"
    done
    printf '%s' "$root"
}

# The fresh image: only libclang-cpp (the bug of issue 11).
r=$(tree cpp-only usr/lib/llvm-14/lib/libclang-cpp.so.14 usr/lib/x86_64-linux-gnu/libclang-cpp.so.14)
expect "only libclang-cpp.so.14" missing -- bash "$setup" --check-libclang "$r"

# libclang1-14 without the -dev symlink: bindgen (runtime linking) loads it.
r=$(tree versioned usr/lib/llvm-14/lib/libclang-14.so.1)
expect "libclang-14.so.1 under llvm-14" present -- bash "$setup" --check-libclang "$r"

r=$(tree multiarch usr/lib/x86_64-linux-gnu/libclang-14.so.1)
expect "libclang-14.so.1 under the multiarch dir" present -- bash "$setup" --check-libclang "$r"

# libclang-dev's unversioned symlink.
r=$(tree dev usr/lib/llvm-14/lib/libclang.so)
expect "libclang.so under llvm-14" present -- bash "$setup" --check-libclang "$r"

# A dangling libclang.so symlink (the -dev package without its target).
r=$(tree dangling usr/lib/llvm-14/lib/libclang-cpp.so.14)
ln -s libclang-14.so.1 "$r/usr/lib/llvm-14/lib/libclang.so"
expect "dangling libclang.so symlink" missing -- bash "$setup" --check-libclang "$r"

# Outside every directory bindgen searches.
r=$(tree elsewhere opt/llvm/lib/libclang.so)
expect "libclang.so outside the search dirs" missing -- bash "$setup" --check-libclang "$r"

r=$(tree empty)
expect "empty tree" missing -- bash "$setup" --check-libclang "$r"

# LIBCLANG_PATH: bindgen searches only it when it is set.
r=$(tree env-cpp lib/libclang-cpp.so.14)
expect "LIBCLANG_PATH holding only libclang-cpp" missing -- \
    env LIBCLANG_PATH="$r/lib" bash "$setup" --check-libclang
r=$(tree env-ok lib/libclang.so.1)
expect "LIBCLANG_PATH holding libclang.so.1" present -- \
    env LIBCLANG_PATH="$r/lib" bash "$setup" --check-libclang
expect "LIBCLANG_PATH naming the file" present -- \
    env LIBCLANG_PATH="$r/lib/libclang.so.1" bash "$setup" --check-libclang
r=$(tree env-miss lib/nothing)
expect "LIBCLANG_PATH set, system dirs ignored" missing -- \
    env LIBCLANG_PATH="$r/lib" bash "$setup" --check-libclang

printf 'test-setup: %d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
