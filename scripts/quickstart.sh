#!/usr/bin/env bash
# The quickstart from a fresh machine: installs what the build needs
# (scripts/setup.sh), then builds and runs the engine quickstart
# (examples/quickstart.rs). It starts an embedded Kafka cluster in-process
# (librdkafka's mock cluster, so no broker to install), computes per-customer
# totals from 10,000 orders into a versioned table, then reads latest values,
# a key's history and the table as of an earlier time, and rewinds it online.
# State goes to a temporary directory, removed at the end.
#
# Arguments pass through to the example: `scripts/quickstart.sh --serve`
# keeps the app running afterwards with its gRPC query service on
# 127.0.0.1:50051 (`--listen ADDR` to change it) until Ctrl-C, for the
# `strata` CLI (docs/cli.md) to query from another terminal.
#
# The state store alone has its own tour: `cargo run --example state_tour`.
# The build directory defaults to $HOME/.cache/strata/target, shared with
# scripts/test.sh; set CARGO_TARGET_DIR to override. A cold build takes about
# 14 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
mkdir -p "$CARGO_TARGET_DIR"

cargo run --locked --example quickstart -- "$@"
