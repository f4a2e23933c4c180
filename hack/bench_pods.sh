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
#                      [--peer-prefetch] [--cpu-quota MILLICORES] [--gen-arg ARG]...
#   --duration S            measured window (60; spans several 5 s cluster-TTL expiries and two 30 s caps)
#   --warmup S              fills the caches at the same rate first (10; 0 = start cold)
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
#                           answers; needs root and /sys/fs/cgroup/cpu; the group is removed afterwards
#   --gen-arg ARG           passed to `hack/bench/pods.py gen` (repeatable): --services N, --outside N,
#                           --namespaces N, --cluster-share F, --cross-ns F, --zipf S, --aaaa-share F,
#                           --cname-share F, --cluster-ttl S, --outside-ttl S
# Same settings as environment variables: BENCH_DURATION, BENCH_WARMUP, BENCH_QPS, BENCH_SERVERS,
# BENCH_CLIENTS, BENCH_OUTSTANDING, BENCH_SEED, BENCH_CPU_QUOTA, BENCH_PORT_BASE (15400), BENCH_SERVER_CPU
# (0), BENCH_CLIENT_CPU (1), BENCH_NICE (0), PYTHON, NODELOCAL.
# Needs: dnsperf, nsd, unbound (+ unbound-control), dnsmasq, taskset (hack/setup.sh installs them) and the
# agent installed (pip install -e .). Every process it starts is stopped on exit, also on failure or Ctrl-C.
# Its helper is hack/bench/pods.py (workload, agent config, probe, report; it reuses hack/bench/report.py).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -x "$HERE/../.venv/bin/python" ]; then
    PYTHON=${PYTHON:-$HERE/../.venv/bin/python}
    NODELOCAL=${NODELOCAL:-$HERE/../.venv/bin/nodelocal}
fi
PYTHON=${PYTHON:-python3}
NODELOCAL=${NODELOCAL:-nodelocal}
PODS=("$PYTHON" "$HERE/bench/pods.py")

DURATION=${BENCH_DURATION:-60}
WARMUP=${BENCH_WARMUP:-10}
QPS=${BENCH_QPS:-5000}
SERVERS=${BENCH_SERVERS:-agent unbound dnsmasq}
CLIENTS=${BENCH_CLIENTS:-20}
OUTSTANDING=${BENCH_OUTSTANDING:-20000}
SEED=${BENCH_SEED:-1}
CPU_QUOTA=${BENCH_CPU_QUOTA:-0}
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
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

for v in DURATION WARMUP QPS CLIENTS OUTSTANDING SEED CPU_QUOTA PORT_BASE SERVER_CPU CLIENT_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((DURATION >= 1 && DURATION <= 600)) || die "duration must be 1..600 s"
((WARMUP <= 300)) || die "warm-up must be 0..300 s"
((QPS >= 1 && QPS <= 200000)) || die "qps must be 1..200000"
((CLIENTS >= 1 && CLIENTS <= 1000)) || die "clients must be 1..1000"
((OUTSTANDING >= 1 && OUTSTANDING <= 65535)) || die "outstanding must be 1..65535"
((CPU_QUOTA <= 64000)) || die "cpu quota must be 0..64000 millicores"
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
if ((CPU_QUOTA)); then
    [[ -w $CG_ROOT/tasks && -e $CG_ROOT/cpu.cfs_quota_us ]] \
        || die "--cpu-quota needs a writable cgroup v1 cpu hierarchy at $CG_ROOT (and root)"
fi

"${PODS[@]}" portfree "$AUTH_PORT" "$AGENT_PORT" "$AGENT_METRICS" "$AGENT_HEALTH" "$UNBOUND_PORT" "$DNSMASQ_PORT" \
    || die "a benchmark port is in use; pick other ones with BENCH_PORT_BASE"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nodelocal-bench-pods.XXXXXX")
FACTS=$WORK/facts
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

cgroup_remove() { # DIR: move whatever is left to the root group, then remove it (bounded)
    local dir=$1 t i
    [[ -d $dir ]] || return 0
    for ((i = 0; i < 20; i++)); do
        while read -r t; do echo "$t" >"$CG_ROOT/tasks" 2>/dev/null || true; done <"$dir/tasks"
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

perf() { # TAG PORT FILE SECONDS DNSPERF-ARGS...: one fixed-rate dnsperf run, bounded by -l and a hard timeout
    local tag=$1 port=$2 file=$3 secs=$4
    shift 4
    local p rc=0
    timeout --kill-after=5 $((secs + 30)) "${PRIO[@]}" taskset -c "$CLIENT_CPU" \
        dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$secs" -Q "$QPS" -c "$CLIENTS" -q "$OUTSTANDING" -t 1 \
        "$@" >"$WORK/$tag.out" 2>&1 &
    p=$!
    PIDS+=("$p")
    wait "$p" || rc=$?
    forget "$p"
    ((rc == 0)) || { tail -5 "$WORK/$tag.out" >&2; die "dnsperf $tag failed (exit $rc)"; }
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
        cg=$CG_ROOT/nodelocal-bench-pods-$$-$name
        mkdir "$cg" || die "cannot create cgroup $cg"
        CGROUPS+=("$cg")
        echo 100000 >"$cg/cpu.cfs_period_us"
        echo $((CPU_QUOTA * 100)) >"$cg/cpu.cfs_quota_us"
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

for s in $SERVERS; do
    case $s in
        agent)
            fact agent version "$("$NODELOCAL" --version 2>&1 | head -1) ($(git -C "$HERE/.." describe --always --dirty 2>/dev/null || echo 'no git'))"
            bench_one agent "$AGENT_PORT" "$NODELOCAL" serve --config "$WORK/agent.yaml" --no-setup "${AGENT_ARGS[@]}"
            ;;
        unbound)
            fact unbound version "unbound $(unbound -V 2>&1 | sed -n 's/^Version //p' | head -1)"
            bench_one unbound "$UNBOUND_PORT" unbound -d -p -c "$WORK/unbound.conf"
            ;;
        dnsmasq)
            fact dnsmasq version "$(dnsmasq --version | head -1 | sed 's/  Copyright.*//')"
            bench_one dnsmasq "$DNSMASQ_PORT" dnsmasq --no-daemon --conf-file=/dev/null --pid-file= \
                --no-resolv --no-hosts --server="127.0.0.1#$AUTH_PORT" --port "$DNSMASQ_PORT" \
                --listen-address 127.0.0.1 --bind-interfaces --cache-size=20000 --max-cache-ttl=30 \
                --dns-forward-max=1000
            ;;
    esac
done

stop "$AUTH_PID"
echo >&2
"${PODS[@]}" report "$WORK" ${JSON_OUT:+--json "$JSON_OUT"}
