#!/usr/bin/env bash
# The whole Flashcast test suite. Installs what it needs (Debian's chromium
# and the browser test's npm packages) and runs:
#   1. every Rust test in the workspace: unit tests, integration tests over
#      real WebSocket connections and a real SQLite file, the real binary,
#      the load tester's own tests, and each benchmark once in test mode;
#   2. the loom model check of the lock-free stock counter (every
#      interleaving), built with --cfg flashcast_loom in its own target dir;
#   3. the browser test of the web page in headless chromium.
# Cluster mode's tests need NATS with JetStream (127.0.0.1:4222) and
# PostgreSQL (127.0.0.1:5432); each is started here if it is not running.
set -euo pipefail
cd "$(dirname "$0")/.."

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits up to 20 s for port $2 after running the rest as a start command.
ensure_service() {
  local name=$1 port=$2
  shift 2
  listening "$port" && return 0
  echo "== starting $name (nothing on 127.0.0.1:$port) =="
  "$@" || true
  for _ in $(seq 1 40); do
    listening "$port" && return 0
    sleep 0.5
  done
  echo "$name is not reachable on 127.0.0.1:$port; start it and re-run" >&2
  exit 1
}

ensure_service "NATS with JetStream" 4222 \
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
ensure_service PostgreSQL 5432 \
  sh -c 'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start'

echo "== cargo test (workspace, all targets) =="
cargo test --workspace --all-targets
cargo test --workspace --doc

echo "== loom: stock counter, all interleavings =="
RUSTFLAGS="--cfg flashcast_loom" CARGO_TARGET_DIR=target/loom \
  cargo test --release --lib commerce::stock

echo "== browser test =="
tests/browser/run.sh
