#!/usr/bin/env bash
# The quickstart from a fresh machine: installs what the build needs
# (scripts/setup.sh), then builds and runs the state tour
# (examples/state_tour.rs), which opens a versioned table on RocksDB in a
# temporary directory and shows its versions, history, reads as of a time,
# a diff, a rewind and a reopen.
#
# Until the engine lands, the quickstart is the state tour; it needs no broker.
# The build directory defaults to $HOME/.cache/strata/target, shared with
# scripts/test.sh; set CARGO_TARGET_DIR to override. A cold build takes
# 10-15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
mkdir -p "$CARGO_TARGET_DIR"

cargo run --locked --example state_tour
