#!/usr/bin/env bash
# The quickstart from a fresh machine: installs what the build needs
# (scripts/setup.sh), then builds and runs the engine quickstart
# (examples/quickstart.rs). It starts an embedded Kafka cluster in-process
# (librdkafka's mock cluster, so no broker to install), computes per-customer
# totals from 10,000 orders into a versioned table, then reads latest values,
# a key's history and the table as of an earlier time, and rewinds it online.
# State goes to a temporary directory, removed at the end.
#
# The state store alone has its own tour: `cargo run --example state_tour`.
# The build directory defaults to $HOME/.cache/strata/target, shared with
# scripts/test.sh; set CARGO_TARGET_DIR to override. A cold build takes
# 10-15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
mkdir -p "$CARGO_TARGET_DIR"

cargo run --locked --example quickstart
