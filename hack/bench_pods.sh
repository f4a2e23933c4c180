#!/usr/bin/env bash
# hack/bench_pods.sh — pod-shaped workload benchmark: nodelocal vs unbound vs dnsmasq on what a node's pods
# really send, with a cache that misses.
#
# The workload (hack/bench/pods.py gen, deterministic from --seed): lookups through kubelet's search path
# with ndots:5 — `web` from a pod in `default` is web.default.svc.cluster.local A+AAAA (2 queries),
# `web.shop` from another namespace 4, `api.example.com` 8 (the 3 search candidates' NXDOMAINs, then the
# name as written) — Zipf-like popularity over 200 services in 8 namespaces and 200 outside names, 70% of
# lookups cluster, 30% outside. Cluster records have TTL 5 s (CoreDNS's kubernetes plugin, SOA minimum 5,
# so NXDOMAIN/NODATA are cached 5 s too); outside names TTL 300 (the agent caps it at 30, and so are the
# peers configured: unbound cache-max-ttl/cache-max-negative-ttl 30, dnsmasq --max-cache-ttl=30).
# The upstream of every server is one authoritative NSD on loopback serving cluster.local and the outside
# zones (with SOA, so negative answers are cacheable); its own query counter gives the upstream load of
# each server the same way.
#
# Per server: a warm-up at the offered rate (--warmup S), then dnsperf at a fixed rate (-Q --qps, -q
# --outstanding, -t 1: an answer later than 1 s counts as lost) for --duration S, while recording
# queries/s achieved, the share answered within 1 s, CPU µs per answered query (server /proc utime+stime),
# latency p50/p99 (dnsperf -v), upstream queries (NSD's num.queries; for the agent its cluster group
# speaks TCP, as deployed), and two hit ratios: the server's own count of queries answered from its cache
# (agent: /metrics coredns_cache_hits/requests; unbound: unbound-control num.cachehits/queries; dnsmasq:
# SIGUSR1 "answered locally"/(that + forwarded)) — what clients see — and 1 - upstream/client queries from
# NSD's count, comparable across servers (but a prefetch raises upstream traffic while it spares clients
# the wait: read both). The report also gives an ideal TTL cache's figure for the same stream.
# Servers run pinned to CPU BENCH_SERVER_CPU (0), dnsperf and NSD to BENCH_CLIENT_CPU (1). Only 127.0.0.1
# and ports BENCH_PORT_BASE+1..+31 (default 15401-15431) are used.
#
# Run (about 75 s per server with the defaults; root only for --cpu-quota):
#   hack/bench_pods.sh [--duration S] [--warmup S] [--qps N] [--servers "agent unbound dnsmasq"]
#                      [--clients N] [--outstanding N] [--seed N] [--json FILE] [--keep]
#                      [--agent-prefetch HITS[:PERCENT]] [--agent-config-extra YAML]... [--agent-arg ARG]...
#                      [--peer-prefetch] [--cpu-quota MILLICORES] [--gen-arg ARG]... [--agent-rev REV]
#   hack/bench_pods.sh --overload [--quick] [--ladder "R ..."] [--step S] [--ladder-warmup S]
#                      [--overload-factor N] [--drain-max S] [--recovery-qps N] [--recovery-secs S]
#                      [--mh-rates "R ..."] [--mh-secs S] [--miss-zone cluster|outside] [any option above]
#   --duration S            measured window (60; spans several 5 s cluster-TTL expiries and two 30 s caps;
#                           30 with --overload, 5 with --quick)
#   --warmup S              fills the caches at the same rate first (10; 0 = start cold; 5 with --overload,
#                           1 with --quick)
#   --qps N                 offered rate (5000)
#   --clients N             dnsperf -c: source sockets (20; pods' resolvers use a new port per lookup)
#   --outstanding N         dnsperf -q (20000: an overloaded server shows up as lost queries, not a
#                           client that politely waits)
#   --agent-prefetch H[:P]  sets zones.<every zone>.cache.prefetch_hits (0 = off) [and prefetch_percent]
#   --agent-config-extra Y  a YAML mapping merged over the agent's config (repeatable), e.g.
#                           '{zones: {cluster.local: {cache: {prefetch_hits: 0}}}}' or
#                           '{upstreams: {cluster: {transport: udp}}}'; the base config is in the kept
#                           work dir (--keep) as agent.yaml
#   --agent-arg ARG         one more argument for `nodelocal serve` (repeatable; flags override the file)
#   --peer-prefetch         unbound with `prefetch: yes` (dnsmasq has no prefetch)
#   --cpu-quota M           run each server in a cgroup v1 CPU group of M millicores (cpu.cfs_quota_us =
#                           M*100, period 100000 µs), every thread of it written to `tasks` once it
#                           answers; needs root and /sys/fs/cgroup/cpu; the group is removed afterwards.
#                           With --overload: the ladder's quota (default 50); the pod run has none
#   --gen-arg ARG           passed to `hack/bench/pods.py gen` (repeatable): --services N, --outside N,
#                           --namespaces N, --cluster-share F, --cross-ns F, --zipf S, --aaaa-share F,
#                           --cname-share F, --cluster-ttl S, --outside-ttl S
#   --agent-rev REV         run the agent from git revision REV (`git archive` into the work dir, run with
#                           PYTHONPATH), not from the tree: uncommitted work in the tree is left out, and
#                           the report names REV's commit
#
# --overload: the issue's figures side by side in one run (about 10 minutes with the defaults; root):
#   1. the pod workload above at --qps without a CPU limit (--duration defaults to 30 here, --warmup to 5);
#   2. in a cgroup of --cpu-quota millicores (default 50 here), a ladder of offered rates of the same
#      workload (fresh server, --ladder-warmup S at the first rate, then each step for --step S), then
#      --overload-factor x its capacity (the most queries/s answered within 1 s on the ladder), then at
#      once a recovery probe (--recovery-qps for --recovery-secs); after each step the server is given up
#      to --drain-max S to go idle (its backlog; recorded), and its CPU, the cgroup's throttling and the
#      kernel's UDP receive-buffer drops are recorded per step;
#   3. without a limit, CPU per hit (100 names, all cached: warmed first, NSD's count must not move) and
#      per miss (unique names under a wildcard in NSD: every query goes upstream) at each --mh-rates rate,
#      after the server's CPU while idle (BENCH_IDLE_SECS, 3 s: timers, part of any low-rate figure).
#   Then one report (hack/bench/overload.py: the pod table, the miss/hit table, the ladders and a summary
#   with agent/unbound and agent/dnsmasq ratios), with --json FILE for all of it.
#   --overload              run 1-3 for each of --servers
#   --quick                 CI-sized (about 1.5 minutes): --duration 5 --warmup 1 --ladder "500 2000" --step 2
#                           --ladder-warmup 1 --drain-max 2 --recovery-secs 2 --mh-secs 2 (implies
#                           --overload; explicit flags still win)
#   --ladder "R R ..."      offered rates of the ladder, q/s ("250 500 1000 2000 3000 4000")
#   --step S                seconds per ladder step, and of the overload step (10)
#   --ladder-warmup S       seconds at the first ladder rate before the ladder (5)
#   --overload-factor N     the overload step's rate as a multiple of the capacity (4)
#   --drain-max S           at most this long, after a step, for the server to go idle (10)
#   --recovery-qps N        the recovery probe's rate (100), for --recovery-secs S (5)
#   --mh-rates "R R"        rates of the hit and miss runs (300 2000), each for --mh-secs S (10)
#   --miss-zone Z           cluster (names under miss.cluster.local: the agent's cluster group, over TCP as
#                           deployed) or outside (miss.example.net: the host group, UDP for all three)
# Same settings as environment variables: BENCH_DURATION, BENCH_WARMUP, BENCH_QPS, BENCH_SERVERS,
# BENCH_CLIENTS, BENCH_OUTSTANDING, BENCH_SEED, BENCH_CPU_QUOTA, BENCH_PORT_BASE (15400), BENCH_SERVER_CPU
# (0), BENCH_CLIENT_CPU (1), BENCH_NICE (0), BENCH_LADDER, BENCH_STEP, BENCH_LADDER_WARMUP,
# BENCH_OVERLOAD_FACTOR, BENCH_DRAIN_MAX, BENCH_RECOVERY_QPS, BENCH_RECOVERY_SECS, BENCH_MH_RATES,
# BENCH_MH_SECS, BENCH_MISS_ZONE, BENCH_IDLE_SECS, PYTHON, NODELOCAL.
# Needs: dnsperf, nsd, unbound (+ unbound-control), dnsmasq, taskset (hack/setup.sh installs them) and the
# agent installed (pip install -e .). Every process it starts is stopped on exit, also on failure or Ctrl-C.
# Its helpers are hack/bench/pods.py (workload, agent config, probe, report; it reuses
# hack/bench/report.py) and, for --overload, hack/bench/overload.py (hit and miss names, capacity, report).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -x "$HERE/../.venv/bin/python" ]; then
    PYTHON=${PYTHON:-$HERE/../.venv/bin/python}
    NODELOCAL=${NODELOCAL:-$HERE/../.venv/bin/nodelocal}
fi
PYTHON=${PYTHON:-python3}
NODELOCAL=${NODELOCAL:-nodelocal}
PODS=("$PYTHON" "$HERE/bench/pods.py")
OVERLOAD_PY=("$PYTHON" "$HERE/bench/overload.py")

DURATION=${BENCH_DURATION:-}
WARMUP=${BENCH_WARMUP:-}
QPS=${BENCH_QPS:-5000}
SERVERS=${BENCH_SERVERS:-agent unbound dnsmasq}
CLIENTS=${BENCH_CLIENTS:-20}
OUTSTANDING=${BENCH_OUTSTANDING:-20000}
SEED=${BENCH_SEED:-1}
CPU_QUOTA=${BENCH_CPU_QUOTA:-}
PORT_BASE=${BENCH_PORT_BASE:-15400}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
NICE=${BENCH_NICE:-0}
JSON_OUT=""
KEEP=0
PEER_PREFETCH=0
AGENT_PREFETCH=""
AGENT_EXTRA=()
AGENT_ARGS=()
GEN_ARGS=()
AGENT_REV=""
OVERLOAD=0
QUICK=0
LADDER=${BENCH_LADDER:-}
STEP=${BENCH_STEP:-}
LADDER_WARMUP=${BENCH_LADDER_WARMUP:-}
FACTOR=${BENCH_OVERLOAD_FACTOR:-4}
DRAIN_MAX=${BENCH_DRAIN_MAX:-}
REC_QPS=${BENCH_RECOVERY_QPS:-100}
REC_SECS=${BENCH_RECOVERY_SECS:-}
MH_RATES=${BENCH_MH_RATES:-300 2000}
MH_SECS=${BENCH_MH_SECS:-}
MISS_ZONE=${BENCH_MISS_ZONE:-cluster}

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "bench_pods.sh: $*" >&2; exit 1; }

while (($#)); do
    case $1 in
        --duration) DURATION=${2:?}; shift 2 ;;
        --warmup) WARMUP=${2:?}; shift 2 ;;
        --qps) QPS=${2:?}; shift 2 ;;
        --servers) SERVERS=${2:?}; shift 2 ;;
        --clients) CLIENTS=${2:?}; shift 2 ;;
        --outstanding) OUTSTANDING=${2:?}; shift 2 ;;
        --seed) SEED=${2:?}; shift 2 ;;
        --json) JSON_OUT=${2:?--json needs a file}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --agent-prefetch) AGENT_PREFETCH=${2:?}; shift 2 ;;
        --agent-config-extra) AGENT_EXTRA+=("${2:?}"); shift 2 ;;
        --agent-arg) AGENT_ARGS+=("${2:?}"); shift 2 ;;
        --peer-prefetch) PEER_PREFETCH=1; shift ;;
        --cpu-quota) CPU_QUOTA=${2:?}; shift 2 ;;
        --gen-arg) GEN_ARGS+=("${2:?}"); shift 2 ;;
        --agent-rev) AGENT_REV=${2:?}; shift 2 ;;
        --overload) OVERLOAD=1; shift ;;
        --quick) QUICK=1; OVERLOAD=1; shift ;;
        --ladder) LADDER=${2:?}; shift 2 ;;
        --step) STEP=${2:?}; shift 2 ;;
        --ladder-warmup) LADDER_WARMUP=${2:?}; shift 2 ;;
        --overload-factor) FACTOR=${2:?}; shift 2 ;;
        --drain-max) DRAIN_MAX=${2:?}; shift 2 ;;
        --recovery-qps) REC_QPS=${2:?}; shift 2 ;;
        --recovery-secs) REC_SECS=${2:?}; shift 2 ;;
        --mh-rates) MH_RATES=${2:?}; shift 2 ;;
        --mh-secs) MH_SECS=${2:?}; shift 2 ;;
        --miss-zone) MISS_ZONE=${2:?}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# defaults that depend on the mode: plain, --overload, --quick (a flag or variable given wins)
pick() { if ((QUICK)); then echo "$3"; elif ((OVERLOAD)); then echo "$2"; else echo "$1"; fi; }
DURATION=${DURATION:-$(pick 60 30 5)}
WARMUP=${WARMUP:-$(pick 10 5 1)}
CPU_QUOTA=${CPU_QUOTA:-$(pick 0 50 50)}
LADDER=${LADDER:-$(pick "" "250 500 1000 2000 3000 4000" "500 2000")}
STEP=${STEP:-$(pick 10 10 2)}
LADDER_WARMUP=${LADDER_WARMUP:-$(pick 5 5 1)}
DRAIN_MAX=${DRAIN_MAX:-$(pick 10 10 2)}
REC_SECS=${REC_SECS:-$(pick 5 5 2)}
MH_SECS=${MH_SECS:-$(pick 10 10 2)}
IDLE_SECS=${BENCH_IDLE_SECS:-$(pick 3 3 1)}
# with --overload, --cpu-quota is the ladder's; the pod run is measured without a limit
LADDER_QUOTA=0
if ((OVERLOAD)); then LADDER_QUOTA=$CPU_QUOTA CPU_QUOTA=0; fi

for v in DURATION WARMUP QPS CLIENTS OUTSTANDING SEED CPU_QUOTA PORT_BASE SERVER_CPU CLIENT_CPU LADDER_QUOTA \
    STEP LADDER_WARMUP FACTOR DRAIN_MAX REC_QPS REC_SECS MH_SECS IDLE_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((DURATION >= 1 && DURATION <= 600)) || die "duration must be 1..600 s"
((WARMUP <= 300)) || die "warm-up must be 0..300 s"
((QPS >= 1 && QPS <= 200000)) || die "qps must be 1..200000"
((CLIENTS >= 1 && CLIENTS <= 1000)) || die "clients must be 1..1000"
((OUTSTANDING >= 1 && OUTSTANDING <= 65535)) || die "outstanding must be 1..65535"
((CPU_QUOTA <= 64000 && LADDER_QUOTA <= 64000)) || die "cpu quota must be 0..64000 millicores"
if ((OVERLOAD)); then
    ((LADDER_QUOTA >= 1)) || die "--overload needs a CPU quota (--cpu-quota M, M >= 1)"
    for r in $LADDER $MH_RATES; do
        [[ $r =~ ^[0-9]+$ ]] && ((r >= 1 && r <= 200000)) || die "ladder and hit/miss rates must be 1..200000 (got '$r')"
    done
    [[ -n ${LADDER// /} && -n ${MH_RATES// /} ]] || die "--ladder and --mh-rates need at least one rate"
    ((STEP >= 1 && STEP <= 120 && LADDER_WARMUP <= 60 && MH_SECS >= 1 && MH_SECS <= 120)) \
        || die "--step and --mh-secs must be 1..120 s, --ladder-warmup 0..60 s"
    ((FACTOR >= 1 && FACTOR <= 20)) || die "--overload-factor must be 1..20"
    ((DRAIN_MAX <= 120 && REC_SECS >= 1 && REC_SECS <= 60)) || die "--drain-max must be 0..120 s, --recovery-secs 1..60 s"
    ((REC_QPS >= 1 && REC_QPS <= 200000)) || die "--recovery-qps must be 1..200000"
    case $MISS_ZONE in cluster | outside) ;; *) die "--miss-zone is cluster or outside" ;; esac
fi
((PORT_BASE >= 1024 && PORT_BASE <= 65000)) || die "port base must be 1024..65000"
if ! [[ $NICE =~ ^-?[0-9]+$ ]] || ((NICE < -20 || NICE > 19)); then die "BENCH_NICE must be -20..19"; fi
if [[ -n $AGENT_PREFETCH && ! $AGENT_PREFETCH =~ ^[0-9]+(:[0-9]+)?$ ]]; then
    die "--agent-prefetch takes HITS or HITS:PERCENT"
fi
PRIO=()
((NICE != 0)) && PRIO=(nice -n "$NICE")
for s in $SERVERS; do
    case $s in agent|unbound|dnsmasq) ;; *) die "unknown server '$s' (agent, unbound, dnsmasq)" ;; esac
done

AUTH_PORT=$((PORT_BASE + 1))
AGENT_PORT=$((PORT_BASE + 11)) AGENT_METRICS=$((PORT_BASE + 12)) AGENT_HEALTH=$((PORT_BASE + 13))
UNBOUND_PORT=$((PORT_BASE + 21))
DNSMASQ_PORT=$((PORT_BASE + 31))

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (${2:-install it})"; }
export PATH=$PATH:/usr/sbin:/sbin
need dnsperf "Debian package dnsperf"
need taskset "util-linux"
need nsd "Debian package nsd"
need nsd-control "Debian package nsd"
need "$PYTHON"
[[ " $SERVERS " == *" unbound "* ]] && { need unbound "Debian package unbound"; need unbound-control "Debian package unbound"; }
[[ " $SERVERS " == *" dnsmasq "* ]] && need dnsmasq "Debian package dnsmasq-base"
[[ " $SERVERS " == *" agent "* ]] && need "$NODELOCAL" "pip install -e ."
taskset -c "$SERVER_CPU,$CLIENT_CPU" true 2>/dev/null || die "cannot pin to CPUs $SERVER_CPU and $CLIENT_CPU"
[[ $SERVER_CPU != "$CLIENT_CPU" ]] || echo "bench_pods.sh: warning: server and dnsperf share CPU $SERVER_CPU" >&2

CG_ROOT=/sys/fs/cgroup/cpu
if ((CPU_QUOTA || LADDER_QUOTA)); then
    [[ -w $CG_ROOT/tasks && -e $CG_ROOT/cpu.cfs_quota_us ]] \
        || die "--cpu-quota needs a writable cgroup v1 cpu hierarchy at $CG_ROOT (and root)"
fi

"${PODS[@]}" portfree "$AUTH_PORT" "$AGENT_PORT" "$AGENT_METRICS" "$AGENT_HEALTH" "$UNBOUND_PORT" "$DNSMASQ_PORT" \
    || die "a benchmark port is in use; pick other ones with BENCH_PORT_BASE"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nodelocal-bench-pods.XXXXXX")
FACTS=$WORK/facts
RUNS=$WORK/runs.facts # --overload: TAG KEY VALUE for each measured dnsperf run (SERVER.KIND)
PIDS=()
CGROUPS=()

# --------------------------------------------------------------------------------------------------
# process and cgroup bookkeeping: every process started goes into PIDS, every cgroup made into CGROUPS;
# cleanup stops and removes them all (TERM, then KILL)

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

cgroup_remove() { # DIR: move whatever is left to the root group of its hierarchy, then remove it (bounded)
    local dir=$1 t i
    [[ -d $dir ]] || return 0
    for ((i = 0; i < 20; i++)); do
        while read -r t; do echo "$t" >"${dir%/*}/tasks" 2>/dev/null || true; done <"$dir/tasks"
        rmdir "$dir" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench_pods.sh: could not remove cgroup $dir" >&2
}

cleanup() {
    local rc=$? g
    trap - EXIT INT TERM
    ((${#PIDS[@]})) && stop_pids "${PIDS[@]}"
    for g in "${CGROUPS[@]}"; do cgroup_remove "$g"; done
    if ((KEEP)) || ((rc != 0)); then
        echo "bench_pods.sh: outputs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

STARTED_PID=""
start() { # NAME CPU CMD...: start a process pinned to CPU, logging to $WORK/NAME.log; sets STARTED_PID
    local name=$1 cpu=$2
    shift 2
    "${PRIO[@]}" taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

forget() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop() {
    stop_pids "$1"
    forget "$1"
}

fact() { echo "$1 $2 $3" >>"$FACTS"; }
rfact() { echo "$1 $2 $3" >>"$RUNS"; }

ticks() { # utime+stime of PID (all its threads) in clock ticks
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo $((${12} + ${13}))
}

rcvbuf_errors() { awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp; }
cpu_line() { awk -v c="cpu$1" '$1 == c { $1 = ""; print }' /proc/stat; }
children_cpu_fact() { # SERVER KEY: CPU seconds of the children waited for so far (the dnsperf runs)
    times >"$WORK/times"
    fact "$1" "$2" "$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
                              printf "%.3f\n", t }' "$WORK/times")"
}
now() { date +%s.%N; }

alive() { kill -0 "$1" 2>/dev/null || { echo "--- $2 log:" >&2; tail -20 "$WORK/$2.log" >&2; die "$2 exited"; }; }

wait_ready() { # PID NAME PORT
    "${PODS[@]}" probe "$3" "$PROBE_NAME" 20 || { alive "$1" "$2"; die "$2 did not answer on 127.0.0.1:$3"; }
    alive "$1" "$2"
}

PERF_PID=""
perf_start() { # TAG PORT FILE SECONDS RATE DNSPERF-ARGS...: start one fixed-rate dnsperf run, bounded by -l
    # and a hard timeout; sets PERF_PID
    local tag=$1 port=$2 file=$3 secs=$4 rate=$5
    shift 5
    timeout --kill-after=5 $((secs + 30)) "${PRIO[@]}" taskset -c "$CLIENT_CPU" \
        dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$secs" -Q "$rate" -c "$CLIENTS" -q "$OUTSTANDING" -t 1 \
        "$@" >"$WORK/$tag.out" 2>&1 &
    PERF_PID=$!
    PIDS+=("$PERF_PID")
}

perf_wait() { # TAG: wait for the run perf_start began
    local rc=0
    wait "$PERF_PID" || rc=$?
    forget "$PERF_PID"
    ((rc == 0)) || { tail -5 "$WORK/$1.out" >&2; die "dnsperf $1 failed (exit $rc)"; }
}

perf_at() { # TAG PORT FILE SECONDS RATE DNSPERF-ARGS...: one fixed-rate dnsperf run
    perf_start "$@"
    perf_wait "$1"
}

perf() { # TAG PORT FILE SECONDS DNSPERF-ARGS...: perf_at at the offered rate --qps
    local tag=$1 port=$2 file=$3 secs=$4
    shift 4
    perf_at "$tag" "$port" "$file" "$secs" "$QPS" "$@"
}

auth_stats() { # FILE: NSD's counters (num.queries, num.udp, num.tcp, num.rcode.*), not reset
    timeout 10 nsd-control -c "$WORK/nsd.conf" stats_noreset >"$1" 2>&1 || { cat "$1" >&2; die "nsd-control stats failed"; }
}

dnsmasq_stats() { # PID FILE: dnsmasq logs its counters on SIGUSR1; wait (bounded) for the new line
    local before n i
    before=$(grep -c 'queries forwarded' "$WORK/dnsmasq.log" || true)
    kill -USR1 "$1"
    for ((i = 0; i < 50; i++)); do
        n=$(grep -c 'queries forwarded' "$WORK/dnsmasq.log" || true)
        ((n > before)) && break
        sleep 0.05
    done
    ((n > before)) || die "dnsmasq did not report its statistics"
    grep 'queries forwarded' "$WORK/dnsmasq.log" | tail -1 >"$2"
}

server_stats() { # NAME PID N: the server's own counters
    case $1 in
        agent) "${PODS[@]}" metrics "http://127.0.0.1:$AGENT_METRICS/metrics" "$WORK/agent.metrics.$3" ;;
        unbound) timeout 10 unbound-control -c "$WORK/unbound.conf" stats_noreset >"$WORK/unbound.stats.$3" 2>&1 \
                     || { cat "$WORK/unbound.stats.$3" >&2; die "unbound-control stats failed"; } ;;
        dnsmasq) dnsmasq_stats "$2" "$WORK/dnsmasq.stats.$3" ;;
    esac
}

CG=""
cgroup_make() { # NAME MILLICORES: a CPU group of its own (recorded for cleanup); sets CG
    CG=$CG_ROOT/nodelocal-bench-pods-$$-$1
    mkdir "$CG" || die "cannot create cgroup $CG"
    CGROUPS+=("$CG")
    echo 100000 >"$CG/cpu.cfs_period_us"
    echo $(($2 * 100)) >"$CG/cpu.cfs_quota_us"
}

# --overload counts a server's CPU with cpuacct.usage (nanoseconds, every thread, exited ones too): the
# clock ticks of /proc/PID/stat are 10 ms, too coarse for 300 hits a second. The cpuacct hierarchy is
# mounted on its own (cgroup v1 here) or with cpu; ACCT_ROOT is "" when there is none (ticks then).
HZ=$(getconf CLK_TCK)
ACCT_ROOT=""
for d in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/cpu,cpuacct "$CG_ROOT"; do
    if [[ -e $d/cpuacct.usage && -w $d/tasks ]]; then ACCT_ROOT=$d; break; fi
done
ACCT=""
acct_make() { # NAME PID: an accounting group holding every thread of PID; sets ACCT ("" without cpuacct).
    # With cpu and cpuacct mounted together the CPU group CG (if any) is it already.
    ACCT=""
    [[ -n $ACCT_ROOT ]] || return 0
    if [[ $ACCT_ROOT == "$CG_ROOT" && -n $CG && -d $CG ]]; then ACCT=$CG; return 0; fi
    ACCT=$ACCT_ROOT/nodelocal-bench-pods-$$-$1
    mkdir "$ACCT" || die "cannot create cgroup $ACCT"
    CGROUPS+=("$ACCT")
    cgroup_join "$ACCT" "$2" >/dev/null
}

cgroup_join() { # DIR PID: write every thread of PID to the group's tasks; prints how many
    local t n=0
    for t in /proc/"$2"/task/*; do
        echo "${t##*/}" >"$1/tasks" && n=$((n + 1))
    done
    echo "$n"
}

cgroup_outside() { # DIR PID: threads of PID not in the group (new threads inherit it; this checks)
    local t n=0
    for t in /proc/"$2"/task/*; do
        grep -qx "${t##*/}" "$1/tasks" || n=$((n + 1))
    done
    echo "$n"
}

# --------------------------------------------------------------------------------------------------
# inputs and configs

echo "bench_pods.sh: generating the workload (seed $SEED) ..." >&2
"${PODS[@]}" gen "$WORK" --seed "$SEED" --qps "$QPS" --duration "$DURATION" --warmup "$WARMUP" "${GEN_ARGS[@]}" \
    || die "workload generation failed"
PROBE_NAME=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["probe_name"])' "$WORK/workload.json")
if ((OVERLOAD)); then
    # hit.txt (100 names, cached before each hit run) and miss-R.txt (unique names, a prefix per rate:
    # the runs at each rate share one server) under the wildcards gen put in the zones
    "${OVERLOAD_PY[@]}" names "$WORK" --rates "$MH_RATES" --secs "$MH_SECS" --miss-zone "$MISS_ZONE" \
        || die "hit/miss names failed"
fi

AGENT_VERSION="$(git -C "$HERE/.." describe --always --dirty 2>/dev/null || echo 'no git')"
if [[ -n $AGENT_REV && " $SERVERS " == *" agent "* ]]; then
    # the agent from a git revision, not from the tree: its package exported into the work dir and run
    # with PYTHONPATH ahead of the editable install (the same interpreter and dependencies)
    rev=$(git -C "$HERE/.." rev-parse --verify --quiet "$AGENT_REV^{commit}") || die "no such revision: $AGENT_REV"
    mkdir "$WORK/agent-src"
    git -C "$HERE/.." archive "$rev" nodelocal | tar -x -C "$WORK/agent-src" || die "git archive $rev failed"
    [[ -x $(dirname "$NODELOCAL")/python ]] && AGENT_PY=$(dirname "$NODELOCAL")/python || AGENT_PY=$PYTHON
    # -P: not the current directory first (from the tree's top it would import the tree's nodelocal)
    printf '#!/bin/sh\nPYTHONPATH=%q${PYTHONPATH:+:$PYTHONPATH} exec %q -P -m nodelocal "$@"\n' \
        "$WORK/agent-src" "$AGENT_PY" >"$WORK/nodelocal-rev"
    chmod +x "$WORK/nodelocal-rev"
    NODELOCAL=$WORK/nodelocal-rev
    AGENT_VERSION="$(git -C "$HERE/.." rev-parse --short "$rev") (--agent-rev $AGENT_REV, exported)"
    where=$(PYTHONPATH=$WORK/agent-src "$AGENT_PY" -P -c 'import nodelocal; print(nodelocal.__file__)' 2>&1) \
        || die "the agent from $AGENT_REV does not import: $where"
    [[ $where == "$WORK/agent-src/"* ]] || die "the agent imported from $where, not from the exported $AGENT_REV"
fi

cat >"$WORK/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$AUTH_PORT
    port: $AUTH_PORT
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$WORK/zones"
    database: ""
    zonelistfile: "$WORK/nsd.zone.list"
    xfrdfile: "$WORK/nsd.xfrd.state"
    xfrdir: "$WORK"
    pidfile: "$WORK/nsd.pid"
    logfile: "$WORK/nsd.file.log"
    verbosity: 0
    # like CoreDNS: no NS/glue added to answers
    minimal-responses: yes
    refuse-any: yes
    tcp-count: 256
    tcp-timeout: 120
    # Debian's NSD has response rate limiting on (200 per second per /24): every query here comes from
    # 127.0.0.1, so it would drop and truncate answers (dnsmasq then fills its forward table, unbound retries
    # over TCP). Off; the report checks NSD's num.dropped and num.truncated.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: yes
    control-interface: "$WORK/nsd.ctl"
EOF
cat "$WORK/nsd.zones.conf" >>"$WORK/nsd.conf"

AGENT_CONF_ARGS=()
[[ -n $AGENT_PREFETCH ]] && AGENT_CONF_ARGS+=(--prefetch "$AGENT_PREFETCH")
for x in "${AGENT_EXTRA[@]}"; do AGENT_CONF_ARGS+=(--extra "$x"); done
if [[ " $SERVERS " == *" agent "* ]]; then
    "${PODS[@]}" agentconf "$WORK/agent.yaml" --auth "127.0.0.1:$AUTH_PORT" --port "$AGENT_PORT" \
        --metrics "$AGENT_METRICS" --health "$AGENT_HEALTH" "${AGENT_CONF_ARGS[@]}" || die "agent config failed"
    "$NODELOCAL" check-config "$WORK/agent.yaml" --no-setup "${AGENT_ARGS[@]}" >"$WORK/agent.check" 2>&1 \
        || { cat "$WORK/agent.check" >&2; die "agent config rejected"; }
fi

# unbound and dnsmasq: caching forwarders with the agent's caps (30 s positive and negative; no minimum:
# no record here is shorter than the agent's min_ttl 5), no prefetch unless --peer-prefetch
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
    cache-max-ttl: 30
    cache-max-negative-ttl: 30
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
    prefetch: $( ((PEER_PREFETCH)) && echo yes || echo no)
    minimal-responses: yes
remote-control:
    control-enable: yes
    control-interface: "$WORK/unbound.ctl"
    control-use-cert: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$AUTH_PORT
EOF

{
    fact run clk_tck "$(getconf CLK_TCK)"
    fact run qps "$QPS"
    fact run duration "$DURATION"
    fact run warmup "$WARMUP"
    fact run clients "$CLIENTS"
    fact run outstanding "$OUTSTANDING"
    fact run seed "$SEED"
    fact run cpu_quota "$CPU_QUOTA"
    fact run server_cpu "$SERVER_CPU"
    fact run client_cpu "$CLIENT_CPU"
    fact run nice "$NICE"
    fact run peer_prefetch "$PEER_PREFETCH"
    fact run overload "$OVERLOAD"
    fact run quick "$QUICK"
    fact run ladder "$LADDER"
    fact run ladder_quota "$LADDER_QUOTA"
    fact run step "$STEP"
    fact run ladder_warmup "$LADDER_WARMUP"
    fact run overload_factor "$FACTOR"
    fact run drain_max "$DRAIN_MAX"
    fact run recovery_qps "$REC_QPS"
    fact run recovery_secs "$REC_SECS"
    fact run mh_rates "$MH_RATES"
    fact run mh_secs "$MH_SECS"
    fact run idle_secs "$IDLE_SECS"
    fact run miss_zone "$MISS_ZONE"
    fact run agent_rev "$AGENT_REV"
    fact run started "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    fact run agent_variant "$(
        v=""
        [[ -n $AGENT_PREFETCH ]] && v+="prefetch $AGENT_PREFETCH "
        for x in "${AGENT_EXTRA[@]}"; do v+="extra $x "; done
        for x in "${AGENT_ARGS[@]}"; do v+="arg $x "; done
        echo "${v% }")"
    fact run dnsperf "$(dnsperf -h 2>&1 | sed -n 's/^Version //p' | head -1)"
    fact run auth "nsd"
    fact run auth_version "$(nsd -v 2>&1 | head -1)"
    fact run user "$(id -un)"
}

# --------------------------------------------------------------------------------------------------
# the authoritative server, then each server in turn

start nsd "$CLIENT_CPU" nsd -d -c "$WORK/nsd.conf"
AUTH_PID=$STARTED_PID
wait_ready "$AUTH_PID" nsd "$AUTH_PORT"

bench_one() { # NAME PORT CMD...
    local name=$1 port=$2 pid cg="" e0 n
    shift 2
    echo "bench_pods.sh: $name ..." >&2
    if ((CPU_QUOTA)); then
        cgroup_make "$name" "$CPU_QUOTA"
        cg=$CG
    fi
    start "$name" "$SERVER_CPU" "$@"
    pid=$STARTED_PID
    wait_ready "$pid" "$name" "$port"
    if [[ -n $cg ]]; then
        n=$(cgroup_join "$cg" "$pid")
        echo "bench_pods.sh: $name: $n threads in $cg ($CPU_QUOTA millicores)" >&2
        fact "$name" cgroup_threads "$n"
    fi
    if ((WARMUP)); then
        perf "$name.warm" "$port" "$WORK/warm.txt" "$WARMUP"
        alive "$pid" "$name"
    fi

    server_stats "$name" "$pid" 0
    auth_stats "$WORK/$name.auth.0"
    [[ -n $cg ]] && cp "$cg/cpu.stat" "$WORK/$name.cpustat.0" && sed -i 's/ /=/' "$WORK/$name.cpustat.0"
    e0=$(rcvbuf_errors)
    fact "$name" ticks0 "$(ticks "$pid")"
    fact "$name" auth_ticks0 "$("${PODS[@]}" treeticks "$AUTH_PID")"
    fact "$name" core0 "$(cpu_line "$SERVER_CPU")"
    fact "$name" ccore0 "$(cpu_line "$CLIENT_CPU")"
    children_cpu_fact "$name" client0
    fact "$name" wall0 "$(now)"
    perf "$name.measure" "$port" "$WORK/queries.txt" "$DURATION" -v
    fact "$name" wall1 "$(now)"
    fact "$name" ticks1 "$(ticks "$pid")"
    fact "$name" auth_ticks1 "$("${PODS[@]}" treeticks "$AUTH_PID")"
    fact "$name" core1 "$(cpu_line "$SERVER_CPU")"
    fact "$name" ccore1 "$(cpu_line "$CLIENT_CPU")"
    children_cpu_fact "$name" client1
    fact "$name" rcvbuf_errors $(($(rcvbuf_errors) - e0))
    [[ -n $cg ]] && cp "$cg/cpu.stat" "$WORK/$name.cpustat.1" && sed -i 's/ /=/' "$WORK/$name.cpustat.1"
    auth_stats "$WORK/$name.auth.1"
    server_stats "$name" "$pid" 1
    if [[ -n $cg ]]; then
        fact "$name" cgroup_threads_outside "$(cgroup_outside "$cg" "$pid")"
    fi
    alive "$pid" "$name"
    stop "$pid"
    [[ -n $cg ]] && cgroup_remove "$cg"
    echo "bench_pods.sh: $name done ($(grep -c . "$WORK/$name.log" || true) log lines)" >&2
}

# --------------------------------------------------------------------------------------------------
# --overload: the ladder under a CPU quota, and CPU per hit and per miss without one

measured() { # TAG PID PORT FILE SECONDS RATE CGROUP LOG: one dnsperf run (-S 1 -v) with the server's CPU
    # (cpuacct of ACCT, and clock ticks), NSD's query count, the cgroup's throttling, the server core's time
    # and the kernel's UDP drops around it; CPU and throttling also at the end of the -l window ("mid"),
    # before dnsperf's last second of waiting for late answers
    local tag=$1 pid=$2 port=$3 file=$4 secs=$5 rate=$6 cg=$7 log=$8 e0 k
    rfact "$tag" rate "$rate"
    rfact "$tag" secs "$secs"
    rfact "$tag" auth0 "$(auth_queries)"
    e0=$(rcvbuf_errors)
    rfact "$tag" core0 "$(cpu_line "$SERVER_CPU")"
    for k in 0 mid 1; do
        if [[ $k == mid ]]; then
            sleep "$secs"
        elif [[ $k == 1 ]]; then
            perf_wait "$tag"
        fi
        [[ -n $cg ]] && rfact "$tag" "cg$k" "$(cgroup_stat "$cg")"
        [[ -n $ACCT ]] && rfact "$tag" "ns$k" "$(<"$ACCT/cpuacct.usage")"
        rfact "$tag" "ticks$k" "$(ticks "$pid")"
        rfact "$tag" "wall$k" "$(now)"
        [[ $k == 0 ]] && perf_start "$tag" "$port" "$file" "$secs" "$rate" -S 1 -v
    done
    rfact "$tag" core1 "$(cpu_line "$SERVER_CPU")"
    rfact "$tag" rcvbuf_errors $(($(rcvbuf_errors) - e0))
    rfact "$tag" auth1 "$(auth_queries)"
    alive "$pid" "$log"
}

auth_queries() { # NSD's num.queries so far
    timeout 10 nsd-control -c "$WORK/nsd.conf" stats_noreset | awk -F= '$1 == "num.queries" { print $2 }'
}

cgroup_stat() { # DIR: "nr_periods nr_throttled throttled_time" of the group
    awk '$1 == "nr_periods" { p = $2 } $1 == "nr_throttled" { t = $2 } $1 == "throttled_time" { s = $2 }
         END { printf "%d %d %.0f\n", p, t, s }' "$1/cpu.stat"
}

cpu_ms() { # PID: the server's CPU so far in ms (cpuacct of ACCT, or clock ticks without it)
    if [[ -n $ACCT ]]; then echo $(($(<"$ACCT/cpuacct.usage") / 1000000)); else echo $(($(ticks "$1") * 1000 / HZ)); fi
}

wait_idle() { # TAG PID MAX: wait (at most MAX s) until the server is idle for a second (its backlog answered
    # or dropped): at most 5 ms of CPU in it (one clock tick without cpuacct); records how many whole
    # seconds it was still busy
    local tag=$1 pid=$2 max=$3 a b i busy=0 idle=0 most=5
    [[ -n $ACCT ]] || most=$((1000 / HZ))
    a=$(cpu_ms "$pid")
    for ((i = 0; i < max; i++)); do
        sleep 1
        b=$(cpu_ms "$pid")
        if ((b - a <= most)); then idle=1; break; fi
        busy=$((busy + 1))
        a=$b
    done
    rfact "$tag" busy_after "$busy"
    rfact "$tag" idle_after "$idle"
}

ladder_one() { # NAME PORT CMD...: a fresh server in a cgroup of LADDER_QUOTA; the ladder, the overload step,
    # the recovery probe
    local name=$1 port=$2 pid n r cap over first
    shift 2
    echo "bench_pods.sh: $name: ladder at $LADDER_QUOTA millicores ($LADDER q/s, $STEP s each) ..." >&2
    cgroup_make "$name-ladder" "$LADDER_QUOTA"
    start "$name.ladder" "$SERVER_CPU" "$@"
    pid=$STARTED_PID
    wait_ready "$pid" "$name.ladder" "$port"
    n=$(cgroup_join "$CG" "$pid")
    rfact "$name" cgroup_threads "$n"
    acct_make "$name-ladder-acct" "$pid"
    rfact "$name" ladder "$LADDER"
    first=${LADDER%% *}
    if ((LADDER_WARMUP)); then
        perf_at "$name.lwarm" "$port" "$WORK/warm.txt" "$LADDER_WARMUP" "$first"
        wait_idle "$name.lwarm" "$pid" "$DRAIN_MAX"
    fi
    for r in $LADDER; do
        measured "$name.l$r" "$pid" "$port" "$WORK/queries.txt" "$STEP" "$r" "$CG" "$name.ladder"
        wait_idle "$name.l$r" "$pid" "$DRAIN_MAX"
    done
    cap=$("${OVERLOAD_PY[@]}" capacity "$WORK" "$name") || die "capacity of $name failed"
    over=$((FACTOR * cap))
    ((over >= 1)) || over=1
    rfact "$name" capacity "$cap"
    echo "bench_pods.sh: $name: capacity $cap q/s answered within 1 s; overload step at $over q/s" >&2
    measured "$name.over" "$pid" "$port" "$WORK/queries.txt" "$STEP" "$over" "$CG" "$name.ladder"
    # the load stops; at once a probe at a low rate: is the server answering again, and from when?
    measured "$name.rec" "$pid" "$port" "$WORK/queries.txt" "$REC_SECS" "$REC_QPS" "$CG" "$name.ladder"
    wait_idle "$name.rec" "$pid" "$DRAIN_MAX"
    rfact "$name" cgroup_threads_outside "$(cgroup_outside "$CG" "$pid")"
    stop "$pid"
    cgroup_remove "$CG"
    [[ -n $ACCT ]] && cgroup_remove "$ACCT"
    CG="" ACCT=""
}

hitmiss_one() { # NAME PORT CMD...: a fresh server without a limit; hits, then misses, at each --mh-rates rate
    local name=$1 port=$2 pid r
    shift 2
    echo "bench_pods.sh: $name: hits and misses at $MH_RATES q/s, $MH_SECS s each ..." >&2
    start "$name.mh" "$SERVER_CPU" "$@"
    pid=$STARTED_PID
    wait_ready "$pid" "$name.mh" "$port"
    CG=""
    acct_make "$name-mh-acct" "$pid"
    # its CPU while nobody asks (timers, sweeps): part of every figure at a low rate
    sleep 1
    rfact "$name.idle" secs "$IDLE_SECS"
    [[ -n $ACCT ]] && rfact "$name.idle" ns0 "$(<"$ACCT/cpuacct.usage")"
    rfact "$name.idle" ticks0 "$(ticks "$pid")"
    rfact "$name.idle" wall0 "$(now)"
    sleep "$IDLE_SECS"
    [[ -n $ACCT ]] && rfact "$name.idle" ns1 "$(<"$ACCT/cpuacct.usage")"
    rfact "$name.idle" ticks1 "$(ticks "$pid")"
    rfact "$name.idle" wall1 "$(now)"
    for r in $MH_RATES; do
        # every hit name asked once just before, so that none expires (the agent caps TTLs at 30 s)
        perf_at "$name.hwarm$r" "$port" "$WORK/hit.txt" 5 1000 -n 1
        measured "$name.hit$r" "$pid" "$port" "$WORK/hit.txt" "$MH_SECS" "$r" "" "$name.mh"
    done
    for r in $MH_RATES; do
        measured "$name.miss$r" "$pid" "$port" "$WORK/miss-$r.txt" "$MH_SECS" "$r" "" "$name.mh"
    done
    stop "$pid"
    [[ -n $ACCT ]] && cgroup_remove "$ACCT"
    ACCT=""
}

if ((OVERLOAD)); then
    est=$("${OVERLOAD_PY[@]}" estimate --servers "$SERVERS" --warmup "$WARMUP" --duration "$DURATION" \
        --ladder "$LADDER" --step "$STEP" --ladder-warmup "$LADDER_WARMUP" --drain-max "$DRAIN_MAX" \
        --recovery-secs "$REC_SECS" --mh-rates "$MH_RATES" --mh-secs "$MH_SECS" --idle-secs "$IDLE_SECS")
    echo "bench_pods.sh: --overload: $est" >&2
fi

for s in $SERVERS; do
    case $s in
        agent)
            fact agent version "$("$NODELOCAL" --version 2>&1 | head -1) ($AGENT_VERSION)"
            SRV_PORT=$AGENT_PORT
            SRV_CMD=("$NODELOCAL" serve --config "$WORK/agent.yaml" --no-setup "${AGENT_ARGS[@]}")
            ;;
        unbound)
            fact unbound version "unbound $(unbound -V 2>&1 | sed -n 's/^Version //p' | head -1)"
            SRV_PORT=$UNBOUND_PORT
            SRV_CMD=(unbound -d -p -c "$WORK/unbound.conf")
            ;;
        dnsmasq)
            fact dnsmasq version "$(dnsmasq --version | head -1 | sed 's/  Copyright.*//')"
            SRV_PORT=$DNSMASQ_PORT
            SRV_CMD=(dnsmasq --no-daemon --conf-file=/dev/null --pid-file= \
                --no-resolv --no-hosts --server="127.0.0.1#$AUTH_PORT" --port "$DNSMASQ_PORT" \
                --listen-address 127.0.0.1 --bind-interfaces --cache-size=20000 --max-cache-ttl=30 \
                --dns-forward-max=1000)
            ;;
    esac
    bench_one "$s" "$SRV_PORT" "${SRV_CMD[@]}"
    if ((OVERLOAD)); then
        hitmiss_one "$s" "$SRV_PORT" "${SRV_CMD[@]}"
        ladder_one "$s" "$SRV_PORT" "${SRV_CMD[@]}"
    fi
done

stop "$AUTH_PID"
echo >&2
if ((OVERLOAD)); then
    "${OVERLOAD_PY[@]}" report "$WORK" ${JSON_OUT:+--json "$JSON_OUT"}
else
    "${PODS[@]}" report "$WORK" ${JSON_OUT:+--json "$JSON_OUT"}
fi
