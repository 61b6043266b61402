#!/usr/bin/env bash
# Real-browser test of the web page (web/index.html).
#
# Builds the server, starts it on a free local port with a throwaway data
# directory, then drives Debian's chromium with playwright-core from Node's
# built-in test runner. The server is always stopped (by PID) on exit.
#
# Needs: node >= 20 and npm; chromium is installed with apt if missing (as
# root). Playwright never downloads a browser here.
#
# With no arguments it runs every test file (npm test, see package.json);
# with file names it runs only those, e.g. `tests/browser/run.sh video.test.mjs`.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
# Test files named on the command line, resolved from where we were called
# (tests/browser/video.test.mjs) or from this folder (video.test.mjs).
FILES=()
for f in "$@"; do
  if [ -e "$f" ]; then FILES+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"); else FILES+=("$HERE/$f"); fi
done
ROOT="$(cd "$HERE/../.." && pwd)"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
ADMIN_KEY="testkey"

# Debian packages: the browser, and a colour emoji font so the reaction
# buttons in the screenshots are not blank boxes.
PKGS=()
[ -x "$CHROMIUM" ] || PKGS+=(chromium)
dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || PKGS+=(fonts-noto-color-emoji)
if [ "${#PKGS[@]}" -gt 0 ]; then
  echo "run.sh: installing ${PKGS[*]} with apt" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${PKGS[@]}"
fi

cd "$HERE"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund

cd "$ROOT"
cargo build --bin flashcast
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/flashcast"

# A free port picked by the OS. Tiny race until the server binds it; fine
# for a local test.
PORT="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
URL="http://127.0.0.1:$PORT"
DATA="$(mktemp -d)"
SERVER_PID=""

cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT

"$BIN" --listen "127.0.0.1:$PORT" --data-dir "$DATA" --admin-key "$ADMIN_KEY" \
  >"$DATA/server.out" 2>"$DATA/server.err" &
SERVER_PID=$!

# Wait for /healthz (up to 30 s), failing fast if the server died.
if ! node -e '
  const url = process.argv[1] + "/healthz";
  const deadline = Date.now() + 30000;
  (async () => {
    while (Date.now() < deadline) {
      try { if ((await fetch(url)).ok) process.exit(0); } catch {}
      await new Promise((r) => setTimeout(r, 100));
    }
    process.exit(1);
  })();' "$URL"; then
  echo "run.sh: server did not become healthy at $URL" >&2
  cat "$DATA/server.err" >&2 || true
  exit 1
fi

cd "$HERE"
status=0
export FLASHCAST_URL="$URL" FLASHCAST_ADMIN_KEY="$ADMIN_KEY" CHROMIUM_PATH="$CHROMIUM" FLASHCAST_BIN="$BIN"
if [ "${#FILES[@]}" -gt 0 ]; then
  node --test --test-reporter=spec --test-concurrency=1 "${FILES[@]}" || status=$?
else
  npm test --silent || status=$?
fi
if [ "$status" -ne 0 ]; then
  echo "--- server log (last 40 lines) ---" >&2
  tail -n 40 "$DATA/server.err" >&2 || true
fi
exit "$status"
