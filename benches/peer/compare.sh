#!/usr/bin/env bash
# Side-by-side peer benchmark (issue #4): Flashcast against nginx + nchan on
# the same machine in the same session, same subscriber count and message
# rate. For each rate it runs
#
#   1. nginx + Debian's libnginx-mod-nchan (benches/peer/nchan.conf, one
#      worker, own temp prefix) with `flashcast-storm nchan`: N WebSocket
#      subscribers, one HTTP publisher at R msgs/s;
#   2. target/release/flashcast (fresh data dir, demo room) with
#      `flashcast-storm run` (a generated scenario): N viewers, S = ceil(2R) chatting at
#      0.5 msg/s each (senders are viewers too);
#
# samples each server's CPU time (utime + stime of its processes, from
# /proc/PID/stat) every 200 ms, takes the CPU spent between the storm's go
# signal and the end of its drain (the storm's JSON `window`), and prints a
# table: delivered events/s, p99 latency, server CPU seconds and server CPU
# microseconds per delivered event. The table is also written as markdown.
#
# Usage: benches/peer/compare.sh [options]
#   --subscribers N   subscribers (nchan) = viewers (Flashcast)   [2000]
#   --rates "R ..."   message rates, msgs/s                       ["10 200"]
#   --duration S      seconds of publishing                       [30]
#   --drain S         seconds of reading after the last message   [10]
#   --workers W       load-generator processes per storm          [2]
#   --join-rate J     connects per second                         [500]
#   --body-bytes B    nchan message size (flashcast-storm nchan)  [100]
#   --peers "P ..."   which to run: nchan, flashcast              ["nchan flashcast"]
#   --out-md FILE     markdown results       [benches/peer/results-DATE.md]
#   --work-dir DIR    logs, JSON reports, CPU samples       [mktemp -d]
#   --nchan-port P / --flashcast-port P                     [18090 / 18080]
#   --no-build        use the binaries in target/release as they are
#   --no-install      never apt-get (fail if nginx + nchan are missing)
# Environment: STORM, FLASHCAST override the two binaries; CARGO_TARGET_DIR
# is honoured.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEER_DIR="$ROOT/benches/peer"

SUBSCRIBERS=2000
RATES="10 200"
DURATION=30
DRAIN=10
WORKERS=2
JOIN_RATE=500
BODY_BYTES=100
PEERS="nchan flashcast"
OUT_MD=""
WORK=""
NCHAN_PORT=18090
FLASHCAST_PORT=18080
BUILD=1
INSTALL=1
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

die() { echo "compare.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --subscribers) SUBSCRIBERS=$2; shift 2 ;;
        --rates) RATES=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --drain) DRAIN=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --join-rate) JOIN_RATE=$2; shift 2 ;;
        --body-bytes) BODY_BYTES=$2; shift 2 ;;
        --peers) PEERS=$2; shift 2 ;;
        --out-md) OUT_MD=$2; shift 2 ;;
        --work-dir) WORK=$2; shift 2 ;;
        --nchan-port) NCHAN_PORT=$2; shift 2 ;;
        --flashcast-port) FLASHCAST_PORT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
STORM=${STORM:-$TARGET_DIR/release/flashcast-storm}
FLASHCAST=${FLASHCAST:-$TARGET_DIR/release/flashcast}
[ -n "$WORK" ] || WORK=$(mktemp -d /tmp/flashcast-peer.XXXXXX)
mkdir -p "$WORK"
[ -n "$OUT_MD" ] || OUT_MD="$PEER_DIR/results-$(date +%Y%m%d-%H%M%S).md"
for tool in jq awk getconf; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
CLK_TCK=$(getconf CLK_TCK)

# --- Only ever stop what this script started ------------------------------
STARTED=()
stop_pid() {
    local pid=$1 sig=${2:-TERM}
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local i
    # Last started first: storm, CPU sampler, then the server.
    for (( i = ${#STARTED[@]} - 1; i >= 0; i-- )); do stop_pid "${STARTED[i]}"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# As many open files as allowed: thousands of sockets per process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- nginx + nchan ---------------------------------------------------------
if [[ " $PEERS " == *" nchan "* ]] && { ! command -v nginx >/dev/null || [ ! -f "$NCHAN_MODULE" ]; }; then
    [ "$INSTALL" = 1 ] || die "nginx or $NCHAN_MODULE missing (apt-get install nginx-light libnginx-mod-nchan)"
    [ "$(id -u)" = 0 ] || die "nginx + nchan missing; run as root to apt-get install them"
    echo "== installing nginx-light + libnginx-mod-nchan"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends nginx-light libnginx-mod-nchan \
        || { apt-get update && apt-get install -y --no-install-recommends nginx-light libnginx-mod-nchan; }
fi

if [ "$BUILD" = 1 ]; then
    echo "== cargo build --release -p flashcast -p flashcast-storm"
    (cd "$ROOT" && cargo build --release -p flashcast -p flashcast-storm)
fi
[ -x "$STORM" ] || die "no $STORM (build it, or set STORM)"
[[ " $PEERS " != *" flashcast "* ]] || [ -x "$FLASHCAST" ] || die "no $FLASHCAST (build it, or set FLASHCAST)"

# --- helpers ----------------------------------------------------------------
now_ms() { local t=$EPOCHREALTIME; echo $(( ${t%.*} * 1000 + 10#${t#*.} / 1000 )); }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 200); do
        port_open "$port" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# utime + stime (clock ticks) of the given PIDs together.
cpu_ticks() {
    local pid stat rest total=0
    local -a f
    for pid in "$@"; do
        { stat=$(<"/proc/$pid/stat"); } 2>/dev/null || continue
        rest=${stat##*) }
        read -r -a f <<<"$rest"
        # After "pid (comm) ": f[0] is field 3 (state); utime = field 14, stime = field 15.
        total=$(( total + f[11] + f[12] ))
    done
    echo "$total"
}

# Samples "unix_ms ticks" of the PIDs every 200 ms into $1 until killed.
start_sampler() {
    local out=$1; shift
    (
        while :; do
            echo "$(now_ms) $(cpu_ticks "$@")"
            sleep 0.2
        done
    ) >"$out" &
    SAMPLER=$!
    STARTED+=("$SAMPLER")
}

# CPU seconds between two unix-ms instants, linearly interpolated between
# the samples around each.
cpu_between() {
    awk -v a="$2" -v b="$3" -v hz="$CLK_TCK" '
        function at(x,   i) {
            if (x <= t[1]) return c[1]
            for (i = 2; i <= n; i++)
                if (x <= t[i]) return c[i-1] + (c[i] - c[i-1]) * (x - t[i-1]) / (t[i] - t[i-1])
            return c[n]
        }
        NF == 2 { n++; t[n] = $1; c[n] = $2 }
        END { if (n < 2) { print "nan"; exit } printf "%.3f", (at(b) - at(a)) / hz }
    ' "$1"
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# Waits for a storm started in the background (so an INT or TERM to this
# script is handled at once, not after the storm); returns its exit code.
wait_storm() {
    STARTED+=("$1")
    wait "$1"
}

ROWS=()
# record PEER RATE REPORT_JSON CPU_SAMPLES EXIT_CODE LOAD DELIVERED_JQ SENT_RATE_JQ FRAMES_JQ
record() {
    local peer=$1 rate=$2 json=$3 samples=$4 rc=$5 load=$6 delivered_q=$7 pub_q=$8 frames_q=$9
    local go stop delivered frames eps fps p99 cpu per per_frame pub
    if [ ! -s "$json" ]; then
        ROWS+=("| $peer | $rate | $SUBSCRIBERS | - | - | - | - | - | - | - | no report (exit $rc) | $load |")
        return
    fi
    go=$(jq -r '.window.go_ms' "$json")
    stop=$(jq -r '.window.stop_ms' "$json")
    delivered=$(jq -r "$delivered_q" "$json")
    eps=$(jq -r "($delivered_q) / (.send_window_secs // 0 | if . > 0 then . else 1 end) | . * 10 | round / 10" "$json")
    frames=$(jq -r "$frames_q" "$json")
    fps=$(jq -r "($frames_q) / (.send_window_secs // 0 | if . > 0 then . else 1 end) | round" "$json")
    pub=$(jq -r "$pub_q" "$json")
    p99=$(jq -r '.latency_ms.p99' "$json")
    cpu=$(cpu_between "$samples" "$go" "$stop")
    per=$(awk -v c="$cpu" -v n="$delivered" 'BEGIN { if (n > 0) printf "%.2f", c * 1e6 / n; else print "-" }')
    per_frame=$(awk -v c="$cpu" -v n="$frames" 'BEGIN { if (n > 0) printf "%.2f", c * 1e6 / n; else print "-" }')
    local verdict="pass"
    [ "$rc" = 0 ] || verdict="FAIL (exit $rc): $(jq -r '.failures | join("; ")' "$json")"
    ROWS+=("| $peer | $rate | $SUBSCRIBERS | $pub | $eps | $fps | $p99 | $cpu | $per | $per_frame | $verdict | $load |")
    printf '   %s @ %s msgs/s: %s events/s delivered, p99 %s ms, server CPU %s s, %s us/event (%s)\n' \
        "$peer" "$rate" "$eps" "$p99" "$cpu" "$per" "$verdict"
    echo "$peer $rate $per" >>"$WORK/per-event.txt"
}

# --- one nchan run ------------------------------------------------------------
run_nchan() {
    local rate=$1 dir="$WORK/nchan-$1" w
    mkdir -p "$dir/logs" "$dir/tmp"
    port_open "$NCHAN_PORT" && die "port $NCHAN_PORT is taken"
    sed "s/@PORT@/$NCHAN_PORT/" "$PEER_DIR/nchan.conf" >"$dir/nchan.conf"
    nginx -p "$dir/" -c "$dir/nchan.conf" -e "$dir/logs/error.log" -g 'daemon off;' \
        >"$dir/nginx.out" 2>&1 &
    local master=$!
    STARTED+=("$master")
    wait_port "$NCHAN_PORT" "$master" || { cat "$dir/nginx.out" "$dir/logs/error.log" >&2; die "nginx did not start"; }
    local workers
    workers=$(cat "/proc/$master/task/$master/children" 2>/dev/null || pgrep -P "$master")
    [ -n "$workers" ] || die "no nginx worker process"
    # shellcheck disable=SC2206
    STARTED+=($workers)
    # shellcheck disable=SC2086
    start_sampler "$dir/cpu.samples" "$master" $workers
    local load rc=0
    load=$(load1)
    echo "== nchan, $rate msgs/s, $SUBSCRIBERS subscribers, ${DURATION}s (load $load; nginx master $master, worker $workers)"
    "$STORM" nchan --url "http://127.0.0.1:$NCHAN_PORT" --subscribers "$SUBSCRIBERS" \
        --rate "$rate" --duration "$DURATION" --drain "$DRAIN" --workers "$WORKERS" \
        --join-rate "$JOIN_RATE" --body-bytes "$BODY_BYTES" --out "$dir/report.json" --quiet \
        >"$dir/storm.out" 2>&1 &
    wait_storm $! || rc=$?
    stop_pid "$SAMPLER"
    # Fast shutdown (TERM), then make sure the worker went with the master.
    stop_pid "$master" TERM
    for w in $workers; do stop_pid "$w" TERM; done
    sed -n '/^flashcast-storm/,$p' "$dir/storm.out"
    record nchan "$rate" "$dir/report.json" "$dir/cpu.samples" "$rc" "$load" \
        '.events_delivered' '.publish_rate' '.events_delivered'
}

# --- one Flashcast run ----------------------------------------------------------
run_flashcast() {
    local rate=$1 dir="$WORK/flashcast-$1"
    mkdir -p "$dir"
    port_open "$FLASHCAST_PORT" && die "port $FLASHCAST_PORT is taken"
    # Logs at warn: nginx runs with access_log off.
    RUST_LOG=${RUST_LOG:-warn} "$FLASHCAST" --listen "127.0.0.1:$FLASHCAST_PORT" \
        --data-dir "$dir/data" >"$dir/flashcast.out" 2>&1 &
    local server=$!
    STARTED+=("$server")
    wait_port "$FLASHCAST_PORT" "$server" || { cat "$dir/flashcast.out" >&2; die "flashcast did not start"; }
    start_sampler "$dir/cpu.samples" "$server"
    # One message per sender every 2 s: the server allows 2/s per user, and
    # a sender whose schedule slips (a busy load generator) must not hit
    # the limit when it catches up.
    local senders
    senders=$(awk -v r="$rate" -v n="$SUBSCRIBERS" 'BEGIN { s = int(2 * r); if (s < 2 * r) s++; if (s < 1) s = 1; if (s > n) s = n; print s }')
    local load rc=0
    load=$(load1)
    echo "== flashcast, $rate msgs/s ($senders senders), $SUBSCRIBERS viewers, ${DURATION}s (load $load; server $server)"
    # The same storm as a scenario: every viewer joins, then S of them chat.
    local join_over chat_at
    join_over=$(awk -v n="$SUBSCRIBERS" -v r="$JOIN_RATE" 'BEGIN { printf "%.2f", n / r }')
    chat_at=$(awk -v j="$join_over" 'BEGIN { printf "%.2f", j + 3 }')
    cat >"$dir/scenario.toml" <<EOF
name = "peer-$rate"
[target]
url = "http://127.0.0.1:$FLASHCAST_PORT"
room = "demo"
[viewers]
count = $SUBSCRIBERS
[load]
workers = $WORKERS
drain = $DRAIN
[[phase]]
type = "join"
at = 0
viewers = $SUBSCRIBERS
over = $join_over
[[phase]]
type = "chat"
at = $chat_at
duration = $DURATION
rate = $rate
senders = $senders
EOF
    "$STORM" run "$dir/scenario.toml" --out "$dir/verdict.json" --quiet \
        >"$dir/storm.out" 2>&1 &
    wait_storm $! || rc=$?
    stop_pid "$SAMPLER"
    stop_pid "$server" TERM
    sed -n '/^flashcast-storm/,$p' "$dir/storm.out"
    # The fields `record` reads, measured from the start of the chat phase
    # (the join ramp is not counted) to the end of the drain.
    if [ -s "$dir/verdict.json" ]; then
        jq --argjson at "$chat_at" --argjson d "$DURATION" --argjson drain "$DRAIN" '{
            window: {go_ms: (.go_unix_ms + ($at * 1000 | floor)),
                     stop_ms: (.go_unix_ms + (($at + $d + $drain) * 1000 | floor))},
            send_window_secs: $d,
            events_received: .counts.events,
            frames_received: .counts.frames,
            chat_sent_per_sec: (.counts.chat_sent / $d),
            latency_ms: .latency_ms,
            failures: .failures
        }' "$dir/verdict.json" >"$dir/report.json"
    fi
    # Delivered chat events (every viewer's copy), as for nchan.
    record flashcast "$rate" "$dir/report.json" "$dir/cpu.samples" "$rc" "$load" \
        '.events_received' '.chat_sent_per_sec' '.frames_received'
}

# --- the runs -----------------------------------------------------------------
echo "== work dir $WORK"
START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
for rate in $RATES; do
    for peer in $PEERS; do
        case "$peer" in
            nchan) run_nchan "$rate" ;;
            flashcast) run_flashcast "$rate" ;;
            *) die "unknown peer $peer" ;;
        esac
        sleep 2
    done
done

# --- the table ----------------------------------------------------------------
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //' || true)
NCHAN_VERSION=$(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo "?")
{
    echo "# Peer benchmark: Flashcast vs nginx + nchan"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "- machine: $(nproc) CPUs, $(uname -sr); load average at start $START_LOAD"
    echo "- nchan: $NGINX_VERSION, libnginx-mod-nchan $NCHAN_VERSION, one worker (benches/peer/nchan.conf)"
    echo "- run: $SUBSCRIBERS subscribers, ${DURATION}s of publishing + ${DRAIN}s drain, $WORKERS load-generator processes, join rate $JOIN_RATE/s; nchan bodies $BODY_BYTES bytes"
    echo "- frames/s: WebSocket frames the subscribers read (nchan: one per event; Flashcast: one per tick batch)"
    echo "- server CPU: utime + stime of the server's processes (nginx master + worker; the flashcast process), from the go signal to the end of the drain; per event = CPU / delivered events"
    echo
    echo "| peer | rate msgs/s | subscribers | sent msgs/s | delivered events/s | frames/s | p99 ms | server CPU s | server CPU µs/event | µs/frame | storm | load 1m |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    printf '%s\n' "${ROWS[@]}"
    if [ -s "$WORK/per-event.txt" ]; then
        echo
        echo "| rate msgs/s | Flashcast ÷ nchan CPU per event | target |"
        echo "| ---: | ---: | --- |"
        for rate in $RATES; do
            awk -v r="$rate" '
                $2 == r && $1 == "nchan" { n = $3 }
                $2 == r && $1 == "flashcast" { f = $3 }
                END {
                    t = (r + 0 >= 200) ? "<= 0.1" : (r + 0 <= 10 ? "<= 0.5" : "-")
                    if (n > 0 && f != "" && f != "-") printf "| %s | %.3f | %s |\n", r, f / n, t
                }' "$WORK/per-event.txt"
        done
    fi
    echo
    echo "Raw reports, logs and CPU samples: $WORK"
} >"$OUT_MD"
echo
cat "$OUT_MD"
echo
echo "== written to $OUT_MD"
