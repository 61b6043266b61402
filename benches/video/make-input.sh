#!/usr/bin/env bash
# A 720p30 VP8 test clip at about 2.5 Mbit/s (IVF), for
# `flashcast-storm video --input`. Needs ffmpeg (Debian: apt-get install ffmpeg).
# Usage: benches/video/make-input.sh [OUT.ivf] [SECONDS]
set -euo pipefail
out=${1:-target/video/testsrc-720p-2500k.ivf}
secs=${2:-20}
mkdir -p "$(dirname "$out")"
command -v ffmpeg >/dev/null || { echo "ffmpeg is missing (apt-get install ffmpeg)" >&2; exit 2; }
ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=size=1280x720:rate=30" -t "$secs" \
  -c:v libvpx -b:v 2500k -minrate 2500k -maxrate 2500k -g 30 -deadline realtime -cpu-used 8 \
  -f ivf "$out"
echo "$out"
