#!/usr/bin/env bash
# The whole Flashcast test suite. Installs what it needs (Debian's chromium
# and the browser test's npm packages) and runs:
#   1. every Rust test in the workspace: unit tests, integration tests over
#      real WebSocket connections and a real SQLite file, the real binary,
#      the load tester's own tests, and each benchmark once in test mode;
#   2. the loom model check of the lock-free stock counter (every
#      interleaving), built with --cfg flashcast_loom in its own target dir;
#   3. the browser test of the web page in headless chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (workspace, all targets) =="
cargo test --workspace --all-targets
cargo test --workspace --doc

echo "== loom: stock counter, all interleavings =="
RUSTFLAGS="--cfg flashcast_loom" CARGO_TARGET_DIR=target/loom \
  cargo test --release --lib commerce::stock

echo "== browser test =="
tests/browser/run.sh
