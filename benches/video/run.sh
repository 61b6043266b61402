#!/usr/bin/env bash
# The video benchmark (issue #5): WHEP viewers one Flashcast node serves for
# a 720p ~2.5 Mbit/s stream. Builds release binaries, starts a server on a
# throwaway data dir, runs `flashcast-storm video` at each viewer count and
# prints one table; stops after the first count where delivery degrades
# (loss > 1 % or latency p99 > 500 ms). JSON reports in $OUT.
#
# Usage: benches/video/run.sh [COUNTS...]        (default: 10 50 100 200)
# Env:   DURATION (s, default 20), RAMP (s, default 10), INPUT (an .ivf file;
#        default: the synthetic stream), PORT (default 18080), OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(10 50 100 200)
DURATION=${DURATION:-20}
RAMP=${RAMP:-10}
PORT=${PORT:-18080}
OUT=${OUT:-target/video-bench}
mkdir -p "$OUT"

cargo build --release -p flashcast -p flashcast-storm >&2

data=$(mktemp -d)
KEY=bench-$RANDOM$RANDOM
./target/release/flashcast --listen 127.0.0.1:$PORT --data-dir "$data" --admin-key "$KEY" \
  --media-max-viewers-per-room 1000 >"$OUT/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/metrics" >/dev/null && break; sleep 0.2; done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
header_done=
for n in "${counts[@]}"; do
  args=(video --url "http://127.0.0.1:$PORT" --room "bench$n" --viewers "$n"
        --ramp-secs "$RAMP" --duration "$DURATION" --server-pid "$server" --quiet
        --out "$OUT/video-$n.json")
  [ -n "${INPUT:-}" ] && args+=(--input "$INPUT")
  set +e
  FLASHCAST_ADMIN_KEY=$KEY ./target/release/flashcast-storm "${args[@]}" >"$OUT/video-$n.txt"
  rc=$?
  set -e
  if [ -z "$header_done" ]; then sed -n 1,3p "$OUT/video-$n.txt" | sed 1d; header_done=1; fi
  tail -n1 "$OUT/video-$n.txt"
  [ $rc -le 1 ] || { echo "run with $n viewers failed (exit $rc)" >&2; break; }
  if python3 - "$OUT/video-$n.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
bad = r["loss_pct"] > 1 or (r["latency_p99_ms"] or 1e9) > 500 or r["viewers_receiving"] < r["viewers"]
sys.exit(1 if bad else 0)
PY
  then :; else echo "delivery degraded at $n viewers: stopping" >&2; break; fi
  sleep 2
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
