#!/usr/bin/env bash
# Creates (once) the Python virtual environment the video end-to-end test
# runs its aiortc peers in, and prints the path of its python.
#
#   tests/video/setup.sh            # -> .../aiortc-venv/bin/python
#
# Where: $FLASHCAST_AIORTC_VENV, else <cargo target dir>/aiortc-venv.
# Idempotent and quick when done: the venv records a hash of
# requirements.txt and is rebuilt only when that file changes. Needs
# python3 (>= 3.10) with venv; as root it installs Debian's python3-venv
# when `python3 -m venv` is missing. Packages come from PyPI.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REQ="$HERE/requirements.txt"
VENV="${FLASHCAST_AIORTC_VENV:-${CARGO_TARGET_DIR:-$ROOT/target}/aiortc-venv}"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || { echo "setup.sh: $PY not found" >&2; exit 1; }
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup.sh: aiortc needs Python >= 3.10; $PY is $("$PY" --version 2>&1)" >&2
  exit 1
fi

if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup.sh: installing python3-venv with apt" >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >&2
  else
    echo "setup.sh: '$PY -m venv' is unavailable; install python3-venv" >&2
    exit 1
  fi
fi

# The stamp is written last: a run that was interrupted leaves no stamp,
# and the next run starts the venv over.
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --only-binary=:all: -r "$REQ" >&2
echo "$WANT" >"$STAMP"
echo "$VENV/bin/python"
