#!/usr/bin/env bash
# hack/bench.sh — side-by-side cache-hit benchmark: nodelocal vs unbound vs dnsmasq (and the Python floor).
#
# What it measures, for each caching forwarder in turn, all pointed at the same loopback upstream
# (a dnsmasq answering *.bench.test with 192.0.2.1, TTL 3600):
#   1. CPU µs per cache-hit query at fixed offered loads (dnsperf -Q, each value of BENCH_QPS), from
#      the server's /proc/PID/stat utime+stime delta divided by the queries dnsperf saw completed;
#      /proc/stat of both cores is recorded too (softirq time, and other programs' CPU: see NOISE below);
#   2. saturated QPS (dnsperf without -Q, one client, BENCH_OUTSTANDING queries in flight) and its CPU
#      per query; when the server's core is not busy, dnsperf (one core) was the limit: a lower bound;
#   3. latency: dnsperf's average, and p50/p99/p99.9 from its -v per-query lines (fixed-load runs;
#      dnsperf 2.10 has no latency-histogram option), plus lost queries and kernel UDP receive-buffer
#      drops (/proc/net/snmp RcvbufErrors, machine-wide) per run;
#   4. RSS (VmRSS) at start, after the measured names, and after BENCH_RSS_NAMES distinct names are cached.
# Every measured query is a cache hit: the names are warmed first, and the script checks it two ways —
# the upstream's own query counter (dnsmasq SIGUSR1 stats) must not move while measuring, and for the
# agent the /metrics coredns_cache_hits_total / coredns_cache_misses_total deltas give the hit ratio.
# "floor" (hack/bench/floor.py) is the least a Python uvloop server can do per hit (dict lookup, send):
# the agent/floor ratio is the cost of the agent's own hit-path code, measured under the same conditions.
# Each server runs pinned to BENCH_SERVER_CPU (0), dnsperf to BENCH_CLIENT_CPU (1). Only 127.0.0.1 and
# ports BENCH_PORT_BASE+1..+41 (default 15301-15341) are used; nothing touches port 53.
#
# Run (about 2 minutes with the defaults; root is not needed):
#   hack/bench.sh [--json FILE] [--duration S] [--qps "N[ N...]"] [--outstanding N] [--names N]
#                 [--rss-names N] [--servers "agent unbound dnsmasq floor"] [--edns] [--keep]
# Same settings as environment variables: BENCH_DURATION (10), BENCH_QPS ("20000 50000": one fixed-load
# run each; the README's Benchmark section compares the servers at 50000), BENCH_OUTSTANDING (200),
# BENCH_NAMES (1000), BENCH_RSS_NAMES (10000), BENCH_SERVERS, BENCH_EDNS (0), BENCH_PORT_BASE (15300),
# BENCH_SERVER_CPU (0), BENCH_CLIENT_CPU (1), PYTHON (python3: runs the helpers), NODELOCAL (nodelocal),
# FLOOR_PYTHON (python3, needs uvloop), BENCH_NICE (0; e.g. -10 as root runs the servers and dnsperf at a
# higher priority, so that other programs on a shared machine disturb the figures less).
# On a shared machine the report flags runs during which other programs used the cores ("NOISE");
# their preemptions batch queries up and so even lower the CPU per query: rerun those.
# Needs: dnsperf, unbound, dnsmasq (Debian: dnsperf unbound dnsmasq-base), taskset, and the agent
# installed (pip install -e .). Every process it starts is stopped on exit, also on failure or Ctrl-C.
# Its helpers are in hack/bench/: report.py (query files, readiness probe, /metrics scrapes, the report)
# and floor.py (the floor server). hack/bench/metrics.py, run on its own, measures what the agent's
# metrics cost on the hit path (.venv/bin/python hack/bench/metrics.py --help).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The project's virtualenv (hack/setup.sh) when there is one, else whatever is on PATH.
if [ -x "$HERE/../.venv/bin/python" ]; then
  PYTHON=${PYTHON:-$HERE/../.venv/bin/python}
  NODELOCAL=${NODELOCAL:-$HERE/../.venv/bin/nodelocal}
fi
PYTHON=${PYTHON:-python3}
NODELOCAL=${NODELOCAL:-nodelocal}
REPORT=("$PYTHON" "$HERE/bench/report.py")

DURATION=${BENCH_DURATION:-10}
QPS=${BENCH_QPS:-20000 50000}
OUTSTANDING=${BENCH_OUTSTANDING:-200}
NAMES=${BENCH_NAMES:-1000}
RSS_NAMES=${BENCH_RSS_NAMES:-10000}
SERVERS=${BENCH_SERVERS:-agent unbound dnsmasq floor}
FLOOR_PYTHON=${FLOOR_PYTHON:-$PYTHON}
EDNS=${BENCH_EDNS:-0}
PORT_BASE=${BENCH_PORT_BASE:-15300}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
NICE=${BENCH_NICE:-0}
JSON_OUT=""
KEEP=0

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "bench.sh: $*" >&2; exit 1; }

while (($#)); do
    case $1 in
        --json) JSON_OUT=${2:?--json needs a file}; shift 2 ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --qps) QPS=${2:?}; shift 2 ;;
        --outstanding) OUTSTANDING=${2:?}; shift 2 ;;
        --names) NAMES=${2:?}; shift 2 ;;
        --rss-names) RSS_NAMES=${2:?}; shift 2 ;;
        --servers) SERVERS=${2:?}; shift 2 ;;
        --edns) EDNS=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

read -ra QPS_LIST <<<"$QPS"
((${#QPS_LIST[@]})) || die "--qps needs at least one rate"
for q in "${QPS_LIST[@]}"; do
    if ! [[ $q =~ ^[0-9]+$ ]] || ((q == 0)); then die "--qps takes whole numbers > 0 (got '$q')"; fi
done
if ! [[ $NICE =~ ^-?[0-9]+$ ]] || ((NICE < -20 || NICE > 19)); then die "BENCH_NICE must be -20..19"; fi
PRIO=()
((NICE != 0)) && PRIO=(nice -n "$NICE")
for v in DURATION OUTSTANDING NAMES RSS_NAMES PORT_BASE SERVER_CPU CLIENT_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((DURATION >= 1 && DURATION <= 120)) || die "duration must be 1..120 s"
((NAMES >= 1 && NAMES <= RSS_NAMES && RSS_NAMES <= 100000)) || die "need 1 <= names <= rss-names <= 100000"
((PORT_BASE >= 1024 && PORT_BASE <= 65000)) || die "port base must be 1024..65000"
for s in $SERVERS; do
    case $s in agent|unbound|dnsmasq|floor) ;; *) die "unknown server '$s' (agent, unbound, dnsmasq, floor)" ;; esac
done

UP_PORT=$((PORT_BASE + 1))
AGENT_PORT=$((PORT_BASE + 11)) AGENT_METRICS=$((PORT_BASE + 12)) AGENT_HEALTH=$((PORT_BASE + 13))
UNBOUND_PORT=$((PORT_BASE + 21))
DNSMASQ_PORT=$((PORT_BASE + 31))
FLOOR_PORT=$((PORT_BASE + 41))

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (${2:-install it})"; }
need dnsperf "Debian package dnsperf"
need taskset "util-linux"
need dnsmasq "Debian package dnsmasq-base"
need "$PYTHON"
[[ " $SERVERS " == *" unbound "* ]] && need unbound "Debian package unbound"
[[ " $SERVERS " == *" agent "* ]] && need "$NODELOCAL" "pip install -e ."
taskset -c "$SERVER_CPU,$CLIENT_CPU" true 2>/dev/null || die "cannot pin to CPUs $SERVER_CPU and $CLIENT_CPU"
[[ $SERVER_CPU != "$CLIENT_CPU" ]] || echo "bench.sh: warning: server and dnsperf share CPU $SERVER_CPU" >&2

"${REPORT[@]}" portfree "$UP_PORT" "$AGENT_PORT" "$AGENT_METRICS" "$AGENT_HEALTH" "$UNBOUND_PORT" "$DNSMASQ_PORT" \
    "$FLOOR_PORT" \
    || die "a benchmark port is in use; pick other ones with BENCH_PORT_BASE"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nodelocal-bench.XXXXXX")
FACTS=$WORK/facts
PIDS=()

# --------------------------------------------------------------------------------------------------
# process bookkeeping: every server started goes into PIDS; cleanup stops them all (TERM, then KILL)

stop_pids() {
    local pid alive i
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    ((${#PIDS[@]})) && stop_pids "${PIDS[@]}"
    if ((KEEP)) || ((rc != 0)); then
        echo "bench.sh: outputs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CPU CMD...: start a process pinned to CPU, logging to $WORK/NAME.log; sets STARTED_PID.
STARTED_PID=""
start() {
    local name=$1 cpu=$2
    shift 2
    "${PRIO[@]}" taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

forget() { # PID: no longer ours to stop
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop() {
    stop_pids "$1"
    forget "$1"
}

fact() { echo "$1 $2 $3" >>"$FACTS"; }

ticks() { # utime+stime of PID in clock ticks (fields 14 and 15; the comm field may hold spaces)
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo $((${12} + ${13}))
}

rcvbuf_errors() { awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp; }
cpu_line() { awk -v c="cpu$1" '$1 == c { $1 = ""; print }' /proc/stat; }  # jiffies of one core
# CPU seconds (user+sys) of all the children this shell has waited for, i.e. the dnsperf runs so far.
# `times` must run in this shell (a $(...) subshell has no children of its own), hence the file.
children_cpu_fact() { # SERVER KEY
    times >"$WORK/times"
    fact "$1" "$2" "$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
                              printf "%.3f\n", t }' "$WORK/times")"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }

alive() { kill -0 "$1" 2>/dev/null || { echo "--- $2 log:" >&2; tail -20 "$WORK/$2.log" >&2; die "$2 exited"; }; }

wait_ready() { # PID NAME PORT
    "${REPORT[@]}" probe "$3" 20 || { alive "$1" "$2"; die "$2 did not answer on 127.0.0.1:$3"; }
    alive "$1" "$2"
}

# dnsperf, pinned, bounded by -l / -n and by a hard timeout; output to $WORK/TAG.out
perf() { # TAG PORT FILE DNSPERF-ARGS...
    local tag=$1 port=$2 file=$3
    shift 3
    local edns=()
    ((EDNS)) && edns=(-e)
    local p rc=0
    # in the background and waited for, so that a signal to this script is handled at once
    timeout --kill-after=5 $((DURATION + 60)) "${PRIO[@]}" taskset -c "$CLIENT_CPU" \
        dnsperf -s 127.0.0.1 -p "$port" -d "$file" -t 2 "${edns[@]}" "$@" >"$WORK/$tag.out" 2>&1 &
    p=$!
    PIDS+=("$p")
    wait "$p" || rc=$?
    forget "$p"
    ((rc == 0)) || { tail -5 "$WORK/$tag.out" >&2; die "dnsperf $tag failed (exit $rc)"; }
}

# The upstream's count of queries it answered (dnsmasq logs its stats on SIGUSR1).
UP_PID=""
upstream_count() {
    local before i n
    before=$(grep -c 'answered locally' "$WORK/upstream.log" || true)
    kill -USR1 "$UP_PID"
    for ((i = 0; i < 50; i++)); do
        n=$(grep -c 'answered locally' "$WORK/upstream.log" || true)
        ((n > before)) && break
        sleep 0.05
    done
    ((n > before)) || die "upstream dnsmasq did not report its statistics"
    grep 'answered locally' "$WORK/upstream.log" | tail -1 | sed 's/.*answered locally \([0-9]*\).*/\1/'
}

# --------------------------------------------------------------------------------------------------
# inputs and configs

"${REPORT[@]}" names "$NAMES" "$WORK/names.txt"
"${REPORT[@]}" names "$RSS_NAMES" "$WORK/names-rss.txt"

cat >"$WORK/agent.yaml" <<EOF
# bench: every name goes to the host group (the loopback upstream), TTLs kept up to an hour,
# room for every warmed name.
log_level: warning
zones:
  ".":
    forward: [host]
    cache:
      success_max_ttl: 3600
      min_ttl: 5
      success_capacity: $((RSS_NAMES + 1000))
EOF

cat >"$WORK/unbound.conf" <<EOF
server:
    verbosity: 0
    num-threads: 1
    interface: 127.0.0.1@$UNBOUND_PORT
    port: $UNBOUND_PORT
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    cache-max-ttl: 3600
    msg-cache-size: 32m
    rrset-cache-size: 64m
    chroot: ""
    username: ""
    directory: "$WORK"
    use-syslog: no
    logfile: ""
    module-config: "iterator"
    qname-minimisation: no
    harden-glue: no
    harden-dnssec-stripped: no
    harden-below-nxdomain: no
    harden-referral-path: no
    harden-algo-downgrade: no
    prefetch: no
    minimal-responses: yes
    # unbound answers the RFC 6761 name 'test.' itself (NXDOMAIN) unless told not to
    local-zone: "test." nodefault
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$UP_PORT
EOF

{
    fact run clk_tck "$(getconf CLK_TCK)"
    fact run names "$NAMES"
    fact run rss_names "$RSS_NAMES"
    fact run qps "$(IFS=,; echo "${QPS_LIST[*]}")"
    fact run duration "$DURATION"
    fact run outstanding "$OUTSTANDING"
    fact run edns "$EDNS"
    fact run server_cpu "$SERVER_CPU"
    fact run client_cpu "$CLIENT_CPU"
    fact run dnsperf "$(dnsperf -h 2>&1 | sed -n 's/^Version //p' | head -1)"
    fact run user "$(id -un)"
    fact run nice "$NICE"
}

if [[ " $SERVERS " == *" agent "* ]]; then
    "$NODELOCAL" check-config "$WORK/agent.yaml" --dev --cluster-dns "127.0.0.1:$UP_PORT" \
        --upstream "127.0.0.1:$UP_PORT" >"$WORK/agent.check" 2>&1 \
        || { cat "$WORK/agent.check" >&2; die "agent config rejected"; }
fi

# --------------------------------------------------------------------------------------------------
# the upstream, then each server in turn

start upstream "$CLIENT_CPU" dnsmasq --no-daemon --conf-file=/dev/null --pid-file= --no-resolv --no-hosts \
    --port "$UP_PORT" --listen-address 127.0.0.1 --bind-interfaces \
    --address=/bench.test/192.0.2.1 --local-ttl=3600
UP_PID=$STARTED_PID
wait_ready "$UP_PID" upstream "$UP_PORT"

bench_one() { # NAME PORT CMD...
    local name=$1 port=$2 pid u0 u1 u2 w
    shift 2
    echo "bench.sh: $name ..." >&2
    start "$name" "$SERVER_CPU" "$@"
    pid=$STARTED_PID
    wait_ready "$pid" "$name" "$port"
    fact "$name" rss_start_kib "$(rss_kib "$pid")"

    # warm: first pass fills the cache, second pass is all hits (dnsperf stops after -n passes)
    u0=$(upstream_count)
    perf "$name.warm" "$port" "$WORK/names.txt" -n 2 -c 1 -q 50
    u1=$(upstream_count)
    fact "$name" upstream_during_warm $((u1 - u0))

    if [[ $name == agent ]]; then
        "${REPORT[@]}" metrics "http://127.0.0.1:$AGENT_METRICS/metrics" "$WORK/agent.metrics.0"
    fi
    local phase q e0 args
    for phase in $(for q in "${QPS_LIST[@]}"; do echo "fixed$q"; done) sat; do
        args=(-l "$DURATION" -c 1 -q "$OUTSTANDING")
        [[ $phase == fixed* ]] && args+=(-Q "${phase#fixed}" -v)
        e0=$(rcvbuf_errors)
        fact "$name" "$phase.ticks0" "$(ticks "$pid")"
        fact "$name" "$phase.core0" "$(cpu_line "$SERVER_CPU")"
        fact "$name" "$phase.ccore0" "$(cpu_line "$CLIENT_CPU")"
        children_cpu_fact "$name" "$phase.client0"
        fact "$name" "$phase.wall0" "$(now)"
        perf "$name.$phase" "$port" "$WORK/names.txt" "${args[@]}"
        fact "$name" "$phase.wall1" "$(now)"
        fact "$name" "$phase.ticks1" "$(ticks "$pid")"
        fact "$name" "$phase.core1" "$(cpu_line "$SERVER_CPU")"
        fact "$name" "$phase.ccore1" "$(cpu_line "$CLIENT_CPU")"
        children_cpu_fact "$name" "$phase.client1"
        fact "$name" "$phase.rcvbuf_errors" $(($(rcvbuf_errors) - e0))
        alive "$pid" "$name"
    done
    u2=$(upstream_count)
    fact "$name" upstream_during_measure $((u2 - u1))
    fact "$name" rss_warm_kib "$(rss_kib "$pid")"
    if [[ $name == agent ]]; then
        "${REPORT[@]}" metrics "http://127.0.0.1:$AGENT_METRICS/metrics" "$WORK/agent.metrics.1"
    fi

    # RSS with RSS_NAMES names cached: one pass to fill, one to make sure (lost ones get retried)
    perf "$name.rss1" "$port" "$WORK/names-rss.txt" -n 1 -c 1 -q 50
    perf "$name.rss2" "$port" "$WORK/names-rss.txt" -n 1 -c 1 -q 50
    sleep 1
    fact "$name" rss_10k_kib "$(rss_kib "$pid")"
    if [[ $name == agent ]]; then
        "${REPORT[@]}" metrics "http://127.0.0.1:$AGENT_METRICS/metrics" "$WORK/agent.metrics.2"
    fi
    alive "$pid" "$name"
    stop "$pid"
    w=$(grep -c . "$WORK/$name.log" || true)
    echo "bench.sh: $name done ($w log lines)" >&2
}

for s in $SERVERS; do
    case $s in
        agent)
            fact agent version "$("$NODELOCAL" --version 2>&1 | head -1) ($(git -C "$HERE/.." describe --always --dirty 2>/dev/null || echo 'no git'))"
            bench_one agent "$AGENT_PORT" "$NODELOCAL" serve --dev --config "$WORK/agent.yaml" \
                --port "$AGENT_PORT" --cluster-dns "127.0.0.1:$UP_PORT" --upstream "127.0.0.1:$UP_PORT" \
                --metrics-addr "127.0.0.1:$AGENT_METRICS" --health-addr "127.0.0.1:$AGENT_HEALTH"
            ;;
        unbound)
            fact unbound version "unbound $(unbound -V 2>&1 | sed -n 's/^Version //p' | head -1)"
            bench_one unbound "$UNBOUND_PORT" unbound -d -p -c "$WORK/unbound.conf"
            ;;
        dnsmasq)
            fact dnsmasq version "$(dnsmasq --version | head -1 | sed 's/  Copyright.*//')"
            bench_one dnsmasq "$DNSMASQ_PORT" dnsmasq --no-daemon --conf-file=/dev/null --pid-file= \
                --no-resolv --no-hosts --server="127.0.0.1#$UP_PORT" --port "$DNSMASQ_PORT" \
                --listen-address 127.0.0.1 --bind-interfaces --cache-size=20000 --max-cache-ttl=3600 \
                --dns-forward-max=1000
            ;;
        floor)
            fact floor version "python floor ($("$FLOOR_PYTHON" -c 'import sys, uvloop; print(sys.version.split()[0], "uvloop", uvloop.__version__)'))"
            bench_one floor "$FLOOR_PORT" "$FLOOR_PYTHON" "$HERE/bench/floor.py" "$FLOOR_PORT"
            ;;
    esac
done

stop "$UP_PID"
echo >&2
"${REPORT[@]}" report "$WORK" ${JSON_OUT:+--json "$JSON_OUT"}
