#!/usr/bin/env bash
# hack/lab.sh — a Kubernetes node in network namespaces, with the agent doing its full network setup.
#
#   hack/lab.sh up                 build it all, start the agent, show a pod resolving through it
#   hack/lab.sh down               remove everything (namespaces, processes, /etc/netns files, state)
#   hack/lab.sh status             namespaces, agent, interface, rules, conntrack counts, counters
#   hack/lab.sh exec POD CMD...    run CMD in node | pod-a | pod-b | coredns | outside
#   hack/lab.sh agent start|stop|kill|restart [ARGS...]
#                                  stop = SIGTERM (teardown), kill = kill -9 (rules stay: fail-open)
#   hack/lab.sh failopen           kill -9 the agent, time every path's first answer, start it again
#   hack/lab.sh rolling-update [ARGS...]
#                                  what kubelet does with maxSurge 1: start a new agent beside the running one
#                                  (ARGS to it: a changed config; LAB_NODELOCAL_NEW: another build), wait until
#                                  it is ready, SIGTERM the old one; the new one took its sockets and cache
#   hack/lab.sh crash-restart      kill -9 the agent, start it again at once (no handover: it binds anew)
#   hack/lab.sh handover KIND... [--seconds N] [--json FILE] [--udp-rate Q] [--tcp-rate Q]
#                                  pods query at a steady rate across a switch of agents (KIND: rolling-update
#                                  config-change kill-mid crash-restart; hack/handoverrun.py)
#   hack/lab.sh fault KIND... [--seconds N] [--json FILE] [--rate Q] [--timeout S] [--warmup S] [--before S]
#                 [--after S] [--delay S] [--loss PCT] [--fresh-agent]
#                                  what pods see while CoreDNS misbehaves (KIND: stop servfail slow loss)
#   hack/lab.sh faults [OPTIONS]   the four kinds in a row
#   hack/lab.sh fault on KIND [ARG] | off | reset | status     the fault switches alone
#   hack/lab.sh flood [--seconds 30] [--rate 1000] [--normal-rate 100] [--json FILE] ...
#                                  pod-a floods unique random names while pod-b asks the usual ones: pod-b's
#                                  answered share and p99, the agent's RSS over time; then a query from an
#                                  address outside the allowed ranges (REFUSED expected) (hack/floodrun.py)
#
# Namespaces ($LAB_PREFIX-NAME, default nl-lab-*), everything inside them; nothing touches the host's:
#   node     the agent (full setup), kube-proxy-like DNAT (iptables nat, as kube-proxy's iptables mode)
#   pod-a    resolv.conf -> kube-dns ClusterIP 10.96.0.10       10.244.1.2  fd53:1::2
#   pod-b    resolv.conf -> 169.254.20.10                       10.244.2.2  fd53:2::2
#   coredns  dnsmasq authoritative for cluster.local (services, a headless service, reverse zones),
#            forwarding other names to `outside`; two endpoint IPs 10.244.3.2/.3, fd53:3::2/::3
#   outside  the node's resolver for other names (www.example.com)   10.250.0.53  fd53:250::53
# Services: kube-dns 10.96.0.10 / fd53:96::a, kube-dns-upstream 10.96.0.11 / fd53:96::b (-> coredns).
# The agent listens on 169.254.20.10, 10.96.0.10 and fd53::10 (iptables mode: it binds the ClusterIP).
#
# Faults (hack/faultrun.py runs the sequences, hack/podload.py is the pods' load):
#   stop      CoreDNS answers nothing: nft in the coredns namespace drops DNS coming in (timeouts, no ICMP)
#   servfail  CoreDNS answers SERVFAIL to everything      } hack/faultdns.py in the coredns namespace, before
#   slow      CoreDNS answers 3 s late (--delay), past     } dnsmasq (nft DNAT :53 -> :5300 on each endpoint
#             the agent's 2 s per-try timeout              } address), passing everything in other phases
#   loss      10% (--loss) of the node's packets to CoreDNS (10.96.0.11 or an endpoint) dropped: nft
#             `numgen random mod 100 < 10 drop` in the node namespace (output and forward hooks)
# Each KIND runs warm-up (10 s), before (20 s), fault (--seconds, 60) and after (20 s) back to back on one
# clock, with hack/podload.py in pod-a (-> 10.96.0.10) and pod-b (-> 169.254.20.10) all along: 200 q/s
# each (--rate), a new socket (source port) per query as pods' resolvers do, 12 (name, type) pairs in turn
# (services, a headless one, NODATA, a search-path NXDOMAIN, an outside name), a client timeout of 2 s
# (--timeout; glibc: 5 s), at most 2000 outstanding (past that counted as dropped, so slow answers never
# lower the offered rate). A query counts in the phase it was sent in. The fault goes on and off at the
# fault phase's edges (within ~0.1 s); the agent's /metrics is scraped at every edge and each second.
# Table per phase and pod: sent, answered (NOERROR or NXDOMAIN), SERVFAIL, REFUSED, timeouts, p50/p99 of
# the answered; per phase, deltas of the agent's cache misses, served-stale, prefetch, upstream tries and
# timeouts to the cluster group, SERVFAIL answers, CoreDNS's own query count (its dnsmasq log), and
# nodelocal_upstream_healthy as sampled. --json FILE keeps it all (per second, per name, every sample).
# Ctrl-C or a failure resets the fault (`fault reset`); `down` ends whatever is left.
#
# Environment: LAB_PREFIX (nl-lab), LAB_STATE (/run/nodelocal-lab), LAB_BACKEND (auto | nft | iptables-nft
# | iptables-legacy), LAB_KUBE_PROXY (iptables-nft | iptables-legacy: where the fake kube-proxy writes),
# LAB_SYNC_INTERVAL (60), LAB_AGENT (1; 0 = up without the agent), LAB_QUIET (0; 1 = no demo queries),
# LAB_NODELOCAL (.venv/bin/nodelocal: the agent binary to run, e.g. another version's, for a comparison).
# Needs root and hack/setup.sh (dnsmasq, dig, nft, iptables, conntrack, ipset).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PREFIX=${LAB_PREFIX:-nl-lab}
STATE=${LAB_STATE:-/run/nodelocal-lab}
BACKEND=${LAB_BACKEND:-auto}
KUBE_PROXY=${LAB_KUBE_PROXY:-iptables-nft}
SYNC=${LAB_SYNC_INTERVAL:-60}
PODS=(node pod-a pod-b coredns outside)

LINK_LOCAL=169.254.20.10
LOCAL6=fd53::10
KUBE_DNS=10.96.0.10
KUBE_DNS6=fd53:96::a
UPSTREAM_SVC=10.96.0.11
UPSTREAM_SVC6=fd53:96::b
COREDNS=(10.244.3.2 10.244.3.3)
COREDNS6=(fd53:3::2 fd53:3::3)
OUTSIDE=10.250.0.53
OUTSIDE6=fd53:250::53

say() { printf 'lab: %s\n' "$*"; }
die() { printf 'lab: %s\n' "$*" >&2; exit 1; }
ns() { printf '%s-%s' "$PREFIX" "$1"; }
in_ns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }
exists() { ip netns list | awk -v n="$(ns "$1")" '$1 == n { found = 1 } END { exit !found }'; }  # reads all: no SIGPIPE
agent_pid() { [ -f "$STATE/agent.pid" ] && kill -0 "$(cat "$STATE/agent.pid")" 2>/dev/null && cat "$STATE/agent.pid"; }

need_root() { [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"; }
need_tools() {
  local t missing=()
  for t in ip dnsmasq dig conntrack nft ipset iptables-nft iptables-legacy curl; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  [ -x .venv/bin/nodelocal ] || missing+=(".venv/bin/nodelocal")
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (run hack/setup.sh)"
}

# kube-proxy's chain names: KUBE-SVC-/KUBE-SEP- + base32(sha256(...))[:16] (pkg/proxy/iptables).
kp_hash() { .venv/bin/python -c 'import base64,hashlib,sys; print(base64.b32encode(hashlib.sha256("".join(sys.argv[1:]).encode()).digest()).decode()[:16])' "$@"; }

# The nat rules kube-proxy's iptables mode writes for kube-dns and kube-dns-upstream (one family).
kube_proxy_rules() {
  local fam=$1 bits=32 cidr=10.244.0.0/16 dns=$KUBE_DNS up=$UPSTREAM_SVC eps=("${COREDNS[@]}")
  if [ "$fam" = 6 ]; then bits=128 cidr=fd53::/16 dns=$KUBE_DNS6 up=$UPSTREAM_SVC6 eps=("${COREDNS6[@]}"); fi
  cat <<EOF
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
EOF
  local svc ip port proto svcchain sep n i ep dest stat
  for svc in kube-dns kube-dns-upstream; do
    ip=$dns; [ "$svc" = kube-dns-upstream ] && ip=$up
    for port in dns dns-tcp; do
      proto=udp; [ "$port" = dns-tcp ] && proto=tcp
      svcchain=KUBE-SVC-$(kp_hash "kube-system/$svc:$port" "$proto")
      echo ":$svcchain - [0:0]"
      echo "-A KUBE-SERVICES -d $ip/$bits -p $proto -m comment --comment \"kube-system/$svc:$port cluster IP\" -m $proto --dport 53 -j $svcchain"
      echo "-A $svcchain ! -s $cidr -d $ip/$bits -p $proto -m comment --comment \"kube-system/$svc:$port cluster IP\" -m $proto --dport 53 -j KUBE-MARK-MASQ"
      n=${#eps[@]}
      for ((i = 0; i < n; i++)); do
        ep=${eps[$i]}
        dest="$ep:53"; [ "$fam" = 6 ] && dest="[$ep]:53"
        sep=KUBE-SEP-$(kp_hash "kube-system/$svc:$port" "$proto" "$dest")
        stat=""
        ((i < n - 1)) && stat="-m statistic --mode random --probability $(awk "BEGIN{printf \"%.11f\", 1/($n-$i)}") "
        echo ":$sep - [0:0]"
        echo "-A $svcchain -m comment --comment \"kube-system/$svc:$port -> $dest\" ${stat}-j $sep"
        echo "-A $sep -s $ep/$bits -m comment --comment \"kube-system/$svc:$port\" -j KUBE-MARK-MASQ"
        echo "-A $sep -p $proto -m comment --comment \"kube-system/$svc:$port\" -m $proto -j DNAT --to-destination $dest"
      done
    done
  done
  echo COMMIT
}

# veth between the node and one pod namespace: node side gets .1 / ::1 of the pod's /24 and /64.
wire() {
  local pod=$1 v4net=$2 v6net=$3 dev=veth-$1
  ip link add "$dev" netns "$(ns node)" type veth peer name eth0 netns "$(ns "$pod")"
  ip -n "$(ns node)" addr add "$v4net.1/24" dev "$dev"
  ip -n "$(ns node)" addr add "$v6net::1/64" dev "$dev" nodad
  ip -n "$(ns node)" link set "$dev" up
  ip -n "$(ns "$pod")" addr add "$v4net.2/24" dev eth0
  ip -n "$(ns "$pod")" addr add "$v6net::2/64" dev eth0 nodad
  ip -n "$(ns "$pod")" link set eth0 up
  ip -n "$(ns "$pod")" route add default via "$v4net.1"
  ip -n "$(ns "$pod")" -6 route add default via "$v6net::1"
}

resolv() {  # /etc/netns/NS/resolv.conf: `ip netns exec` bind-mounts it over /etc/resolv.conf
  mkdir -p "/etc/netns/$(ns "$1")"
  printf 'nameserver %s\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n' "$2" \
    >"/etc/netns/$(ns "$1")/resolv.conf"
}

start_dnsmasq() {  # NAME POD ARGS...
  local name=$1 pod=$2; shift 2
  in_ns "$pod" dnsmasq --conf-file=/dev/null --pid-file="$STATE/$name.pid" --user=root --no-resolv --no-hosts \
    --log-facility="$STATE/$name.log" "$@"
}

write_agent_config() {
  cat >"$STATE/agent.yaml" <<EOF
# hack/lab.sh: the agent of the lab node (iptables mode: it binds the kube-dns ClusterIP too)
listen:
  localip: [$LINK_LOCAL, $KUBE_DNS, "$LOCAL6"]
upstreams:
  cluster: {servers: ["$UPSTREAM_SVC"]}   # kube-dns-upstream: kube-proxy DNATs it to CoreDNS
  host: {servers: ["$OUTSIDE"]}          # the node's own resolver
netsetup:
  rules_backend: $BACKEND
  sync_interval: $SYNC
  kube_dns_ips: [$KUBE_DNS, "$KUBE_DNS6"]
metrics_addr: "127.0.0.1:9253"
control: {socket: "$STATE/control.sock"}  # nodelocal cache / doctor --socket (never the host's /run/nodelocal)
handover:
  socket: $STATE/handover.sock  # this lab's own (the node namespace shares the host's /run)
  linger: true                  # as in the DaemonSet: after handing over, wait for SIGTERM
  snapshot: $STATE/cache.snapshot  # as in the DaemonSet: a restart after kill -9 starts warm
EOF
}

agent_start() {
  [ -z "$(agent_pid || true)" ] || { say "agent already running (pid $(agent_pid))"; return 0; }
  exists node || die "the lab is not up"
  agent_spawn "$STATE/agent.pid" "${LAB_NODELOCAL:-$ROOT/.venv/bin/nodelocal}" /health "$@"
  say "agent running (pid $(cat "$STATE/agent.pid"), log $STATE/agent.log)"
}

agent_spawn() {  # PIDFILE BINARY PATH ARGS...: start an agent, wait for `serving on` and GET PATH = 200
  local pidfile=$1 bin=$2 path=$3 from i pid
  shift 3
  from=1
  [ -f "$STATE/agent.log" ] && from=$(($(wc -l <"$STATE/agent.log") + 1))
  : >>"$STATE/agent.log"  # exists before the first look at it below
  # setsid: the agent outlives this script; `ip netns exec` execs, so $! is the agent itself.
  setsid ip netns exec "$(ns node)" "$bin" serve --config "$STATE/agent.yaml" "$@" \
    >>"$STATE/agent.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$pidfile"
  for ((i = 0; i < 200; i++)); do  # its log says when every listener is bound and the rules are in
    if (($(tail -n "+$from" "$STATE/agent.log" | grep -c "serving on" || true) > 0)) &&
      in_ns node curl -sf -o /dev/null "http://$LINK_LOCAL:8080$path" 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -20 "$STATE/agent.log" >&2; die "agent exited"; }
    sleep 0.05
  done
  tail -20 "$STATE/agent.log" >&2
  die "agent did not answer $path within 10s"
}

cmd_rolling_update() {  # [ARGS...]: kubelet's maxSurge 1 on this node
  need_root
  local old new i t0
  old=$(agent_pid) || die "the agent is not running (hack/lab.sh agent start)"
  t0=$(now)
  # The new agent: ready (its /ready, on the listener it took over) means it serves with the old one's sockets.
  agent_spawn "$STATE/agent.new.pid" "${LAB_NODELOCAL_NEW:-${LAB_NODELOCAL:-$ROOT/.venv/bin/nodelocal}}" /ready "$@"
  new=$(cat "$STATE/agent.new.pid")
  say "new agent pid $new ready after $(since "$t0")s; SIGTERM to the old one (pid $old)"
  kill -TERM "$old" 2>/dev/null || true  # gone already (killed): nothing to stop
  for ((i = 0; i < 300; i++)); do kill -0 "$old" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$old" 2>/dev/null && { say "old agent ignored SIGTERM for 15s: kill -9"; kill -KILL "$old"; }
  mv "$STATE/agent.new.pid" "$STATE/agent.pid"
  say "rolling update done in $(since "$t0")s: pid $old -> $new"
}

cmd_crash_restart() {  # kill -9, then start again at once: no handover (the socket file is stale)
  need_root
  agent_kill
  agent_start "$@"
}

agent_stop() {  # SIGTERM: drain, teardown (rules, then interface)
  local pid i
  pid=$(agent_pid) || { say "agent not running"; return 0; }
  kill -TERM "$pid"
  for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { say "agent ignored SIGTERM for 15s: kill -9"; kill -KILL "$pid"; }
  rm -f "$STATE/agent.pid"
  say "agent stopped (SIGTERM)"
}

agent_kill() {  # kill -9: no teardown, rules stay behind: DNS must fail open
  local pid
  pid=$(agent_pid) || { say "agent not running"; return 0; }
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$STATE/agent.pid"
  say "agent killed with SIGKILL at $(date +%T.%3N); its interface and rules are still there"
}

metric() {  # sum of a metric's samples (by name prefix) from the agent's /metrics
  in_ns node curl -s "http://127.0.0.1:9253/metrics" 2>/dev/null |
    awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%d", s }'
}

pod_dns_conntrack() {  # conntrack entries in the node for DNS to any local IP (pods' and host clients')
  local ip n=0 c
  for ip in $LINK_LOCAL $KUBE_DNS $LOCAL6; do
    c=$(in_ns node conntrack -L -d "$ip" 2>/dev/null | grep -c 'dport=53 ' || true)
    n=$((n + c))
  done
  echo "$n"
}

answer() {  # POD SERVER NAME [dig options]: the answer's first line
  local pod=$1 server=$2 name=$3; shift 3
  in_ns "$pod" dig +short +time=2 +tries=1 "@$server" "$name" "$@" 2>&1 | head -1 || true
}

demo() {
  local before after a b c d
  before=$(metric coredns_dns_requests_total)
  a=$(answer pod-a "$KUBE_DNS" web.default.svc.cluster.local)
  b=$(answer pod-a "$KUBE_DNS" www.example.com)
  c=$(answer pod-b "$LINK_LOCAL" db.default.svc.cluster.local)
  d=$(answer pod-b "$LOCAL6" web.default.svc.cluster.local AAAA)
  after=$(metric coredns_dns_requests_total)
  say "pod-a -> $KUBE_DNS    web.default.svc.cluster.local  = $a"
  say "pod-a -> $KUBE_DNS    www.example.com                = $b"
  say "pod-b -> $LINK_LOCAL db.default.svc.cluster.local   = $c (headless: one of several)"
  say "pod-b -> $LOCAL6      web.default.svc.cluster.local  AAAA = $d"
  say "the agent counted $((after - before)) of these 4 queries; conntrack entries for DNS to the local IPs: $(pod_dns_conntrack)"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

cmd_failopen() {  # kill -9 the agent, time each path's first answer, start it again
  need_root
  [ -n "$(agent_pid || true)" ] || die "the agent is not running (hack/lab.sh agent start)"
  local names=("pod-a -> $KUBE_DNS (udp)" "pod-a -> $KUBE_DNS (tcp)" "pod-b -> $LINK_LOCAL (udp)"
    "pod-b -> $LINK_LOCAL (tcp)" "pod-b -> $LOCAL6 (udp)" "node  -> $KUBE_DNS (udp)" "node  -> $LINK_LOCAL (udp)")
  local cmds=("pod-a $KUBE_DNS" "pod-a $KUBE_DNS +tcp" "pod-b $LINK_LOCAL" "pod-b $LINK_LOCAL +tcp"
    "pod-b $LOCAL6" "node $KUBE_DNS" "node $LINK_LOCAL")
  local done_=() i t0 a c0 port
  c0=$(grep -c 'query\[' "$STATE/coredns.log" 2>/dev/null || true)
  agent_kill
  t0=$(now)
  while ((${#done_[@]} < ${#names[@]})) && awk -v s="$(since "$t0")" 'BEGIN { exit !(s < 10) }'; do
    for i in "${!names[@]}"; do
      [[ " ${done_[*]} " == *" $i "* ]] && continue
      # shellcheck disable=SC2086
      a=$(answer ${cmds[$i]%% *} ${cmds[$i]#* } web.default.svc.cluster.local +time=1 2>/dev/null || true)
      if [[ $a =~ ^[0-9] ]]; then
        say "+$(since "$t0")s  ${names[$i]}: $a"
        done_+=("$i")
      fi
    done
    sleep 0.05
  done
  ((${#done_[@]} == ${#names[@]})) || say "not every path answered within 10s"
  say "CoreDNS logged $(($(grep -c 'query\[' "$STATE/coredns.log") - c0)) queries meanwhile; conntrack entries for DNS to the local IPs: $(pod_dns_conntrack) (tracked: kube-proxy's path)"
  agent_start
  port=$((40000 + RANDOM % 10000))
  a=$(in_ns pod-b dig +short +time=2 +tries=1 -b "10.244.2.2#$port" "@$LINK_LOCAL" web.default.svc.cluster.local | head -1 || true)
  say "pod-b -> $LINK_LOCAL from port $port: $a; conntrack entries for that query: $(in_ns node conntrack -L -p udp --sport "$port" 2>/dev/null | grep -c . || true)"
}

# --- faults: CoreDNS misbehaving (hack/faultrun.py drives the sequences; these are the switches) -------
FAULT_PORT=5300  # hack/faultdns.py in the coredns namespace, on each CoreDNS address
FAULT_KINDS="stop servfail slow loss"
proxy_pid() { [ -f "$STATE/faultdns.pid" ] && kill -0 "$(cat "$STATE/faultdns.pid")" 2>/dev/null && cat "$STATE/faultdns.pid"; }
proxy_mode() { echo "$1" >"$STATE/faultdns.mode"; kill -HUP "$(proxy_pid)"; }  # read at once
nft_del() { in_ns "$1" nft delete table inet "$2" 2>/dev/null || true; }  # NS TABLE, if there

fault_proxy_start() {  # faultdns.py on ADDR:5300 -> ADDR:53 (dnsmasq), and a DNAT of port 53 to it
  [ -n "$(proxy_pid || true)" ] && return 0
  local a args=() rules="" i nl=$'\n'
  echo pass >"$STATE/faultdns.mode"
  rm -f "$STATE/faultdns.stats"
  for a in "${COREDNS[@]}" "${COREDNS6[@]}"; do args+=(--listen "$a"); done
  setsid ip netns exec "$(ns coredns)" "$ROOT/.venv/bin/python" "$ROOT/hack/faultdns.py" "${args[@]}" \
    --port "$FAULT_PORT" --mode-file "$STATE/faultdns.mode" --stats "$STATE/faultdns.stats" \
    >>"$STATE/faultdns.log" 2>&1 </dev/null &
  echo $! >"$STATE/faultdns.pid"
  for ((i = 0; i < 100; i++)); do
    [ -f "$STATE/faultdns.stats" ] && break
    kill -0 "$(cat "$STATE/faultdns.pid")" 2>/dev/null || { tail -5 "$STATE/faultdns.log" >&2; die "faultdns.py exited"; }
    sleep 0.1
  done
  [ -f "$STATE/faultdns.stats" ] || die "faultdns.py did not start within 10s"
  for a in "${COREDNS[@]}"; do
    rules+="    iifname \"eth0\" ip daddr $a udp dport 53 dnat ip to $a:$FAULT_PORT$nl"
    rules+="    iifname \"eth0\" ip daddr $a tcp dport 53 dnat ip to $a:$FAULT_PORT$nl"
  done
  for a in "${COREDNS6[@]}"; do
    rules+="    iifname \"eth0\" ip6 daddr $a udp dport 53 dnat ip6 to [$a]:$FAULT_PORT$nl"
    rules+="    iifname \"eth0\" ip6 daddr $a tcp dport 53 dnat ip6 to [$a]:$FAULT_PORT$nl"
  done
  in_ns coredns nft -f - <<EOF
table inet nlfault_proxy {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
$rules  }
}
EOF
  # Connections the agent already has to dnsmasq are not NATed: forget them, so that their next segment
  # meets the DNAT (and a reset from the proxy): the agent reconnects, through the proxy.
  in_ns coredns conntrack -F >/dev/null 2>&1 || true
}

fault_proxy_stop() {
  local pid
  nft_del coredns nlfault_proxy
  if pid=$(proxy_pid); then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/faultdns.pid" "$STATE/faultdns.mode"
  in_ns coredns conntrack -F >/dev/null 2>&1 || true
}

fault_prepare() {  # KIND: what must be in place before the fault (the proxy, for servfail and slow)
  case $1 in
    servfail | slow) fault_proxy_start ;;
    stop | loss) ;;
    *) die "fault kind: one of $FAULT_KINDS" ;;
  esac
}

fault_on() {  # KIND [ARG]: slow ARG = seconds (3), loss ARG = percent (10)
  local kind=$1 arg=${2:-} daddr daddr6
  case $kind in
    stop)  # CoreDNS answers nothing: DNS traffic to its pod is dropped as it comes in (timeouts, no ICMP)
      in_ns coredns nft -f - <<EOF
table inet nlfault_stop {
  chain in {
    type filter hook input priority filter; policy accept;
    iifname "eth0" meta l4proto { tcp, udp } th dport { 53, $FAULT_PORT } counter drop
  }
}
EOF
      ;;
    servfail) fault_prepare servfail; proxy_mode servfail ;;
    slow) fault_prepare slow; proxy_mode "slow ${arg:-3}" ;;
    loss)  # a share of the node's packets to CoreDNS (the kube-dns-upstream ClusterIP or an endpoint) lost
      arg=${arg:-10}
      [[ $arg =~ ^[0-9]+$ ]] && ((arg >= 1 && arg <= 100)) || die "loss: a whole percent 1..100"
      local pick="numgen random mod 100 < $arg"  # numgen's values are 0..99: 100% is a plain drop
      ((arg < 100)) || pick=""
      daddr="ip daddr { $UPSTREAM_SVC, ${COREDNS[0]}, ${COREDNS[1]} } meta l4proto { tcp, udp } th dport 53 $pick"
      daddr6="ip6 daddr { $UPSTREAM_SVC6, ${COREDNS6[0]}, ${COREDNS6[1]} } meta l4proto { tcp, udp } th dport 53 $pick"
      in_ns node nft -f - <<EOF
table inet nlfault_loss {
  chain local {
    type filter hook output priority filter; policy accept;
    $daddr counter drop comment "loss $arg%"
    $daddr6 counter drop comment "loss $arg%"
  }
  chain routed {
    type filter hook forward priority filter; policy accept;
    $daddr counter drop comment "loss $arg%"
    $daddr6 counter drop comment "loss $arg%"
  }
}
EOF
      ;;
    *) die "fault kind: one of $FAULT_KINDS" ;;
  esac
}

fault_off() {  # CoreDNS healthy again (the proxy, if there, stays in the path, passing)
  nft_del coredns nlfault_stop
  nft_del node nlfault_loss
  [ -z "$(proxy_pid || true)" ] || proxy_mode pass
}

fault_state() {
  local s=() pct
  in_ns coredns nft list table inet nlfault_stop >/dev/null 2>&1 && s+=("stop (the coredns namespace drops port 53)")
  if in_ns node nft list table inet nlfault_loss >/dev/null 2>&1; then
    pct=$(in_ns node nft list table inet nlfault_loss | grep -o 'loss [0-9]*%' | head -1)
    s+=("$pct of node->CoreDNS packets")
  fi
  [ -z "$(proxy_pid || true)" ] || s+=("faultdns.py in front of CoreDNS, mode: $(cat "$STATE/faultdns.mode" 2>/dev/null || echo pass)")
  if ((${#s[@]})); then printf '%s\n' "${s[@]}"; else echo "none"; fi
}

cmd_fault() {  # KIND... [faultrun options] | on KIND [ARG] | off | reset | status | prepare KIND
  need_root
  exists node || die "the lab is not up (hack/lab.sh up)"
  case ${1:-} in
    on)
      [ -n "${2:-}" ] || die "usage: hack/lab.sh fault on KIND [ARG]"
      fault_on "$2" "${3:-}"
      say "fault on: $(fault_state | paste -sd';')"
      ;;
    off) fault_off; say "fault off: $(fault_state | paste -sd';')" ;;
    reset) fault_off; fault_proxy_stop; say "fault reset: CoreDNS answers directly again" ;;
    status) fault_state ;;
    prepare) fault_prepare "${2:-}" ;;
    stop | servfail | slow | loss | all)
      local kinds=() a
      while [ $# -gt 0 ] && [[ " $FAULT_KINDS all " == *" $1 "* ]]; do
        if [ "$1" = all ]; then read -ra a <<<"$FAULT_KINDS"; kinds+=("${a[@]}"); else kinds+=("$1"); fi
        shift
      done
      [ -n "$(agent_pid || true)" ] || die "the agent is not running (hack/lab.sh agent start)"
      exec "$ROOT/.venv/bin/python" "$ROOT/hack/faultrun.py" --lab "$ROOT/hack/lab.sh" --prefix "$PREFIX" \
        --state "$STATE" "${kinds[@]}" "$@"
      ;;
    *) die "usage: hack/lab.sh fault KIND... [--seconds N] [--json FILE] ... | fault on KIND [ARG] | off | reset | status (KIND: $FAULT_KINDS)" ;;
  esac
}

cmd_up() {
  need_root
  need_tools
  local p
  for p in "${PODS[@]}"; do exists "$p" && die "namespace $(ns "$p") exists: run hack/lab.sh down first"; done
  mkdir -p "$STATE"
  trap 'echo "lab: up failed; cleaning up" >&2; cmd_down >/dev/null 2>&1 || true' ERR
  for p in "${PODS[@]}"; do
    ip netns add "$(ns "$p")"
    ip -n "$(ns "$p")" link set lo up
  done
  in_ns node sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  wire pod-a 10.244.1 fd53:1
  wire pod-b 10.244.2 fd53:2
  wire coredns 10.244.3 fd53:3
  ip -n "$(ns coredns)" addr add "${COREDNS[1]}/24" dev eth0
  ip -n "$(ns coredns)" addr add "${COREDNS6[1]}/64" dev eth0 nodad
  # outside: the node's uplink; the node's default route goes there (so ClusterIPs route before DNAT).
  ip link add veth-outside netns "$(ns node)" type veth peer name eth0 netns "$(ns outside)"
  ip -n "$(ns node)" addr add 10.250.0.1/24 dev veth-outside
  ip -n "$(ns node)" addr add fd53:250::1/64 dev veth-outside nodad
  ip -n "$(ns node)" link set veth-outside up
  ip -n "$(ns outside)" addr add "$OUTSIDE/24" dev eth0
  ip -n "$(ns outside)" addr add "$OUTSIDE6/64" dev eth0 nodad
  ip -n "$(ns outside)" link set eth0 up
  ip -n "$(ns outside)" route add 10.244.0.0/16 via 10.250.0.1
  ip -n "$(ns outside)" -6 route add fd53::/16 via fd53:250::1
  ip -n "$(ns node)" route add default via "$OUTSIDE"
  ip -n "$(ns node)" -6 route add default via "$OUTSIDE6"

  resolv pod-a "$KUBE_DNS"
  resolv pod-b "$LINK_LOCAL"
  resolv node "$OUTSIDE"

  # CoreDNS: an authoritative dnsmasq for cluster.local and the reverse zones on loopback, and a front
  # on the pod's addresses that asks it for those zones and `outside` for everything else.
  start_dnsmasq coredns-auth coredns --port=5353 --listen-address=127.0.0.1 --bind-interfaces \
    --auth-server=ns.dns.cluster.local,lo --auth-zone=cluster.local,10.96.0.0/12,10.244.0.0/16,fd53::/16 \
    --auth-soa=1,hostmaster.cluster.local,60,60,600,30 --auth-ttl=30 \
    --host-record=kube-dns.kube-system.svc.cluster.local,$KUBE_DNS,$KUBE_DNS6 \
    --host-record=kube-dns-upstream.kube-system.svc.cluster.local,$UPSTREAM_SVC,$UPSTREAM_SVC6 \
    --host-record=web.default.svc.cluster.local,10.96.1.5,fd53:96::1:5 \
    --host-record=api.default.svc.cluster.local,10.96.1.6 \
    --host-record=db.default.svc.cluster.local,10.244.5.1 \
    --host-record=db.default.svc.cluster.local,10.244.5.2 \
    --host-record=db.default.svc.cluster.local,10.244.5.3 \
    --srv-host=_http._tcp.web.default.svc.cluster.local,web.default.svc.cluster.local,80
  start_dnsmasq coredns coredns --interface=eth0 --bind-interfaces --log-queries --cache-size=0 \
    --server=/cluster.local/127.0.0.1#5353 --server=/10.in-addr.arpa/127.0.0.1#5353 \
    --server=/3.5.d.f.ip6.arpa/127.0.0.1#5353 --server="$OUTSIDE"
  start_dnsmasq outside outside --interface=eth0 --bind-interfaces --local-ttl=300 \
    --host-record=www.example.com,203.0.113.10,2001:db8::10 --host-record=example.org,203.0.113.20 \
    --address=/invalid/

  # kube-proxy, iptables mode: the ClusterIPs of kube-dns and kube-dns-upstream DNAT-ed to CoreDNS.
  kube_proxy_rules 4 | in_ns node "$KUBE_PROXY-restore" --noflush
  kube_proxy_rules 6 | in_ns node "${KUBE_PROXY/iptables/ip6tables}-restore" --noflush

  write_agent_config
  trap - ERR
  say "up: namespaces $PREFIX-{$(IFS=,; echo "${PODS[*]}")}, kube-proxy rules in $KUBE_PROXY, state in $STATE"
  if [ "${LAB_AGENT:-1}" = 1 ]; then
    agent_start || { cmd_down >/dev/null 2>&1; exit 1; }
    [ "${LAB_QUIET:-0}" = 1 ] || demo
  fi
  [ "${LAB_QUIET:-0}" = 1 ] && return 0
  cat <<EOF

Query like a pod (each pod has its own /etc/resolv.conf: 'ip netns exec' mounts /etc/netns/NS/resolv.conf):
  hack/lab.sh exec pod-a dig +search web                       # -> kube-dns ClusterIP $KUBE_DNS, answered by the agent
  hack/lab.sh exec pod-b dig +search db                        # -> $LINK_LOCAL (headless service: 3 A records)
  hack/lab.sh exec pod-b dig @$LOCAL6 www.example.com AAAA   # IPv6 local IP, an outside name
  hack/lab.sh exec pod-a dig -x 10.96.1.5                      # reverse zone
  hack/lab.sh exec node dig @$LINK_LOCAL web.default.svc.cluster.local   # a host-network client
  hack/lab.sh status                                           # rules, conntrack counts, the agent's counters
Fail-open:
  hack/lab.sh agent kill       # kill -9: rules stay; queries above still answered (by CoreDNS)
  hack/lab.sh agent start      # back to the agent, no new conntrack entries
  hack/lab.sh agent stop       # SIGTERM: teardown, no rule or interface of ours remains
  hack/lab.sh down
EOF
}

cmd_down() {
  need_root
  local p pid f
  if pid=$(agent_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  for f in "$STATE"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for p in "${PODS[@]}"; do
    exists "$p" || continue
    # Whatever still runs inside our namespaces was started by the lab: end it, then the namespace.
    for pid in $(ip netns pids "$(ns "$p")" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$(ns "$p")"
    rm -rf "/etc/netns/$(ns "$p")"
  done
  rmdir /etc/netns 2>/dev/null || true  # only if empty: others may keep theirs there
  rm -rf "$STATE"
  say "down: namespaces, processes and state removed"
}

cmd_status() {
  need_root
  local p up=0
  for p in "${PODS[@]}"; do exists "$p" && up=$((up + 1)); done
  ((up > 0)) || { say "down (no $PREFIX-* namespaces)"; return 0; }
  say "namespaces: $up of ${#PODS[@]} ($PREFIX-*)"
  if pid=$(agent_pid); then say "agent: running, pid $pid"; else say "agent: not running"; fi
  echo "--- interface"
  in_ns node ip -br addr show dev nodelocaldns 2>/dev/null || echo "(no nodelocaldns interface)"
  echo "--- rules of ours (status -v: all of them)"
  local v fam save table
  if table=$(in_ns node nft list table inet nodelocal 2>/dev/null); then
    if [ "$1" = -v ]; then echo "$table"; else
      say "nft table inet nodelocal: $(grep -c 'comment "nodelocal' <<<"$table") rules; heartbeat: $(grep -o 'elements = .*' <<<"$table" | tr '\n' ' ')"
    fi
  fi
  for v in nft legacy; do
    for fam in iptables ip6tables; do
      save=$(in_ns node "$fam-$v-save" 2>/dev/null || true)
      grep -q NODELOCAL <<<"$save" || continue
      if [ "$1" = -v ]; then grep -E '^\*|NODELOCAL' <<<"$save" | sed "s/^/$fam-$v /"; else
        say "$fam-$v: $(grep -c '^-A .*NODELOCAL\|^-A NODELOCAL' <<<"$save") rules (NODELOCAL-* chains and their jumps)"
      fi
    done
  done
  in_ns node ipset list -t 2>/dev/null | awk '/^Name/ { n = $2 } /^Number of entries/ { print "lab: ipset " n ": " $4 " entries (heartbeat)" }' || true
  echo "--- conntrack (node namespace)"
  say "all entries:                          $(in_ns node conntrack -C 2>/dev/null || echo '?')"
  say "DNS to the local IPs (pods and host): $(pod_dns_conntrack)   <- 0 while the agent answers"
  say "the agent's own upstream connections: $(in_ns node conntrack -L -d "$UPSTREAM_SVC" 2>/dev/null | grep -c . || true)"
  if [ -n "$(agent_pid || true)" ]; then
    echo "--- the agent's counters"
    in_ns node curl -s http://127.0.0.1:9253/metrics |
      grep -E '^(coredns_dns_requests_total|coredns_cache_(hits|misses)_total|coredns_nodecache_setup_errors_total|nodelocal_setup_)' |
      grep -v ' 0.0$' || true
  fi
  echo "--- CoreDNS (dnsmasq) queries logged: $(grep -c 'query\[' "$STATE/coredns.log" 2>/dev/null || echo 0)"
  echo "--- faults: $(fault_state | paste -sd';')"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status "${2:-}" ;;
  failopen) cmd_failopen ;;
  rolling-update) shift; cmd_rolling_update "$@" ;;
  crash-restart) shift; cmd_crash_restart "$@" ;;
  handover)
    shift
    need_root
    [ -n "$(agent_pid || true)" ] || die "the agent is not running (hack/lab.sh agent start)"
    exec "$ROOT/.venv/bin/python" "$ROOT/hack/handoverrun.py" --lab "$ROOT/hack/lab.sh" --prefix "$PREFIX" \
      --state "$STATE" "$@"
    ;;
  fault) shift; cmd_fault "$@" ;;
  faults) shift; cmd_fault all "$@" ;;
  flood)
    shift
    need_root
    exists node || die "the lab is not up (hack/lab.sh up)"
    [ -n "$(agent_pid || true)" ] || die "the agent is not running (hack/lab.sh agent start)"
    exec "$ROOT/.venv/bin/python" "$ROOT/hack/floodrun.py" --lab "$ROOT/hack/lab.sh" --prefix "$PREFIX" \
      --state "$STATE" "$@"
    ;;
  exec)
    shift
    [ $# -ge 2 ] || die "usage: hack/lab.sh exec POD CMD... (POD: ${PODS[*]})"
    pod=$1; shift
    exists "$pod" || die "no namespace $(ns "$pod") (POD: ${PODS[*]}; is the lab up?)"
    exec ip netns exec "$(ns "$pod")" "$@"
    ;;
  agent)
    need_root
    case ${2:-} in
      start) shift 2; agent_start "$@" ;;
      stop) agent_stop ;;
      kill) agent_kill ;;
      restart) shift 2; agent_stop; agent_start "$@" ;;
      *) die "usage: hack/lab.sh agent start|stop|kill|restart [ARGS...]" ;;
    esac
    ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
