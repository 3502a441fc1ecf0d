#!/usr/bin/env bash
# Runs Strata's whole test suite from a fresh machine: installs what the build
# and the tests need (scripts/setup.sh), then builds and runs every test of
# every crate (unit, property, conformance, integration against a Tansu
# broker the tests start on loopback, examples and doc tests).
#
# The build directory defaults to $HOME/.cache/strata/target so repeated runs
# (and CI on the same machine) reuse the RocksDB and librdkafka builds; set
# CARGO_TARGET_DIR to override. A cold build takes about 25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

# setup.sh's own detection first: it decides what a fresh machine installs.
scripts/test-setup.sh
scripts/setup.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE=1
mkdir -p "$CARGO_TARGET_DIR"

# Lints are part of the suite: a warning fails it (formatting too). Both
# come with the Rust toolchain (rustup components), not from apt.
for tool in clippy fmt; do
    cargo "$tool" --version >/dev/null 2>&1 || {
        echo "test: 'cargo $tool' is not available; install it with: rustup component add ${tool/fmt/rustfmt}" >&2
        exit 1
    }
done
cargo fmt --all --check
# No import circle between the files of a crate, no module over ~600 lines
# (python3 is checked by setup.sh).
python3 scripts/check-imports.py
cargo clippy --workspace --all-targets --locked -- -D warnings

# Benches are compiled (test profile, sharing the build) but not run here:
# they are measurements, see docs/benchmarks.md.
cargo test --workspace --benches --no-run --locked
cargo test --workspace --locked "$@"
