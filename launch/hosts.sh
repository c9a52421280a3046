#!/usr/bin/env bash
# Several "hosts" on this one machine, for testing pcasgd across hosts without a cluster.
#
#   launch/hosts.sh up [N] [--rate RATE]   make hosts node1..nodeN (default 2); RATE shapes what
#                                           each host sends with tc tbf (e.g. 1gbit)
#   launch/hosts.sh rate RATE|off          shape every host's link anew (or not at all), hosts up
#   launch/hosts.sh down                   remove every host this script made
#   launch/hosts.sh status                 the hosts that are up (exit 1 if none)
#   launch/hosts.sh hostfile [SLOTS]       an Open MPI hostfile for them (default 2 slots each)
#   launch/hosts.sh env                    the exports that make Open MPI run across them
#   launch/hosts.sh exec K CMD...          run CMD on host K (inside its namespaces)
#   launch/hosts.sh mpirun MPIRUN-ARGS...  mpirun from node1 across every host
#   launch/hosts.sh agent HOST CMD...      PRRTE's launch agent (what ssh would be on a cluster)
#   launch/hosts.sh horovodrun ARGS...     horovodrun --gloo from node1 across every host, in
#                                           elastic mode (a host-discovery script listing the hosts,
#                                           PCASGD_HOSTS_SLOTS slots each; ssh is the agent below)
#   launch/hosts.sh slurm up               a Slurm cluster over the hosts: slurmctld on node1, a
#                                           slurmd on every host (needs Debian's slurm-wlm and a
#                                           running munged: .ci/slurm.sh)
#   launch/hosts.sh slurm CMD ARGS...      a Slurm command (sbatch, srun, sinfo...) from node1 on
#                                           that cluster, with the Open MPI settings of 'env'
#
# A host is a network namespace and a UTS namespace (its own hostname) with one network
# interface, bed0, plugged into a switch: a Linux bridge in a namespace of its own. One interface
# of the same name on every host is what launchers that pick "the" interface by name need
# (Horovod's gloo). Addresses come from the loopback range only (127.77.0.K, made routable with
# route_localnet), so nothing here reaches or shadows a real network; /etc/hosts gets one marked
# line per host. The file system, processes and users stay shared: only the network and
# the hostname differ, which is what MPI, PRRTE and a failure on "another host" need.
# Needs root (ip netns, unshare, nsenter). See docs/cluster.md.
set -Eeuo pipefail  # -E: the ERR trap of `up` fires inside the functions it calls too
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
prefix="${PCASGD_HOSTS_PREFIX:-pcasgd-node}"
marker="# pcasgd test hosts $prefix"  # each bed's own lines: `down` removes no other bed's
# shellcheck source=launch/forward.sh
source "$(dirname "$self")/forward.sh"
state="/run/$prefix"

netns() { echo "${prefix}$1"; }
switch="${prefix}-switch"
uts() { echo "$state/uts$1"; }
address() { echo "127.77.0.$1"; }
name() { echo "node$1"; }
count() { cat "$state/count" 2>/dev/null || echo 0; }
on_host() { local k="$1"; shift; nsenter --net="/run/netns/$(netns "$k")" --uts="$(uts "$k")" "$@"; }
# A launcher (mpirun, horovodrun) on host K, in a session of its own. With Linux's autogroup
# scheduling each session shares the CPUs as one: the ranks a launcher starts on its own host
# would otherwise share one slice with everything else the caller's session runs (a test suite,
# its load), while the other hosts' ranks, started by daemons in sessions of their own, get a
# slice each; measured on 2 cores with two busy loops in the caller's session, the first host's
# ranks did 13 and 11 iterations to the other host's 72. Called from a program (not a process-
# group leader), setsid starts the session in place: the launcher keeps this pid, which a
# timeout then kills. A shell's job is a group leader, where setsid would fork and leave the
# launcher out of reach of the terminal's Ctrl-C: it runs in the background instead, and the
# signals this script gets are passed on.
launch_on_host() {
  local k="$1"; shift
  local enter=(nsenter --net="/run/netns/$(netns "$k")" --uts="$(uts "$k")")
  if [ "$(ps -o pgid= -p $$ | tr -d ' ')" != "$$" ]; then
    exec setsid "${enter[@]}" "$@"
  fi
  run_forwarding setsid "${enter[@]}" "$@"
  exit "$status"
}

die() { echo "launch/hosts.sh: $*" >&2; exit 1; }

up() {
  local n=2 rate=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --rate) rate="$2"; shift 2 ;;
      [0-9]*) n="$1"; shift ;;
      *) die "unknown argument '$1' (up [N] [--rate RATE])" ;;
    esac
  done
  [ "$n" -ge 2 ] && [ "$n" -le 16 ] || die "N must be 2..16, got $n"
  [ "${#prefix}" -le 12 ] || die "PCASGD_HOSTS_PREFIX '$prefix' is longer than 12 characters (interface names)"
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
  [ "$(count)" = 0 ] || die "hosts are already up ($(count)); run 'launch/hosts.sh down' first"
  mkdir -p "$state"
  echo "$n" > "$state/count"
  trap 'down >/dev/null 2>&1 || true; echo "launch/hosts.sh: up failed; what it had built is removed" >&2' ERR
  for k in $(seq 1 "$n"); do
    ip netns add "$(netns "$k")"
    touch "$(uts "$k")"
    unshare --uts="$(uts "$k")" hostname "$(name "$k")"
    on_host "$k" ip link set lo up
    on_host "$k" sysctl -qw net.ipv4.conf.all.route_localnet=1
    echo "$(address "$k") $(name "$k") $marker" >> /etc/hosts
  done
  ip netns add "$switch"
  ip -n "$switch" link add bridge type bridge
  ip -n "$switch" link set bridge up
  for k in $(seq 1 "$n"); do
    plug "$k" "$rate"
  done
  trap - ERR
  echo "launch/hosts.sh: $n hosts up: $(for k in $(seq 1 "$n"); do printf '%s=%s ' "$(name "$k")" "$(address "$k")"; done)"
}

plug() {
  # host k's bed0, the other end of its veth pair a port of the switch's bridge
  local k="$1" rate="$2"
  ip link add "$prefix-$k" type veth peer name "port$k" netns "$switch"
  ip link set "$prefix-$k" netns "$(netns "$k")" name bed0
  ip -n "$switch" link set "port$k" master bridge up
  on_host "$k" sysctl -qw net.ipv4.conf.bed0.route_localnet=1
  on_host "$k" ip addr add "$(address "$k")/32" dev bed0
  on_host "$k" ip link set bed0 up
  for peer in $(seq 1 "$(count)"); do
    [ "$peer" = "$k" ] || on_host "$k" ip route add "$(address "$peer")/32" dev bed0 src "$(address "$k")"
  done
  [ -z "$rate" ] || shape "$k" "$rate"
}

shape() {
  # what host k sends leaves through a token bucket of RATE (tc's units: 300mbit, 20mbit); off: none
  local k="$1" rate="$2"
  on_host "$k" tc qdisc del dev bed0 root 2>/dev/null || true
  [ "$rate" = off ] || on_host "$k" tc qdisc add dev bed0 root tbf rate "$rate" burst 256kb latency 50ms
}

set_rate() {
  [ $# = 1 ] || die "usage: rate RATE|off"
  [ "$(count)" -gt 0 ] || die "no hosts are up (launch/hosts.sh up N)"
  for k in $(seq 1 "$(count)"); do
    shape "$k" "$1" || die "tc refused the rate '$1' on $(name "$k") (a tc rate such as 20mbit, or off)"
  done
  echo "launch/hosts.sh: every host's link at $1"
}

down() {
  local n
  n="$(count)"
  for k in $(seq 1 "$n"); do
    # processes left on a host (a killed test's ranks) go with it
    for pid in $(ip netns pids "$(netns "$k")" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$(netns "$k")" 2>/dev/null || true
    umount "$(uts "$k")" 2>/dev/null || true
  done
  ip netns delete "$switch" 2>/dev/null || true
  if grep -q -- " $marker\$" /etc/hosts; then
    # /etc/hosts may be a bind mount (containers): rewrite it in place, never replace the file
    local kept
    kept="$(grep -v -- " $marker\$" /etc/hosts)"
    printf '%s\n' "$kept" > /etc/hosts
  fi
  rm -rf "$state"
  echo "launch/hosts.sh: hosts down"
}

status() {
  local n
  n="$(count)"
  [ "$n" -gt 0 ] || { echo "launch/hosts.sh: no hosts up"; return 1; }
  for k in $(seq 1 "$n"); do
    echo "$(name "$k") $(address "$k") $(on_host "$k" hostname)"
  done
}

hostfile() {
  local slots="${1:-2}"
  for k in $(seq 1 "$(count)"); do echo "$(name "$k") slots=$slots"; done
}

mpi_env() {
  cat <<ENV
export PRTE_MCA_plm_ssh_agent="$self agent"
export PRTE_MCA_rmaps_default_mapping_policy=slot:oversubscribe
export OMPI_MCA_btl=tcp,self
export OMPI_MCA_osc=rdma
export OMPI_MCA_btl_tcp_if_include=127.77.0.0/16
export PRTE_MCA_oob_tcp_if_include=127.77.0.0/16
export PMIX_MCA_ptl_tcp_if_include=127.77.0.0/16
ENV
}

agent() {
  # PRRTE calls the agent as ssh: HOST followed by the command line to run there.
  local host="$1"; shift
  local k="${host#node}"
  [ -f "$(uts "$k")" ] || die "agent: unknown host '$host'"
  exec nsenter --net="/run/netns/$(netns "$k")" --uts="$(uts "$k")" /bin/bash -c "$*"
}

run_mpirun() {
  local n file
  n="$(count)"
  [ "$n" -gt 0 ] || die "no hosts up (launch/hosts.sh up)"
  file="$state/hostfile"
  hostfile "${PCASGD_HOSTS_SLOTS:-2}" > "$file"
  eval "$(mpi_env)"
  local mpirun="${PCASGD_MPIRUN:-mpirun}"
  launch_on_host 1 "$mpirun" --hostfile "$file" "$@"
}

run_horovodrun() {
  # Horovod starts remote workers with a literal "ssh ... HOST ... COMMAND" and lists the hosts
  # with a discovery script: both are written here, the ssh being the agent above.
  local n bin
  n="$(count)"
  [ "$n" -gt 0 ] || die "no hosts up (launch/hosts.sh up)"
  bin="$state/horovod-bin"
  mkdir -p "$bin"
  cat > "$bin/ssh" <<SSH
#!/usr/bin/env bash
while [ \$# -gt 0 ]; do case "\$1" in -o|-p|-i) shift 2 ;; -*) shift ;; *) break ;; esac; done
host="\$1"; shift
exec bash "$self" agent "\$host" "\$*"
SSH
  hostfile "${PCASGD_HOSTS_SLOTS:-2}" | sed 's/ slots=/:/' > "$state/horovod-hosts"
  printf '#!/bin/sh\ncat "%s"\n' "$state/horovod-hosts" > "$bin/discover-hosts"
  chmod +x "$bin/ssh" "$bin/discover-hosts"
  local horovodrun="${PCASGD_HOROVODRUN:-${PCASGD_VENV:-$(dirname "$(dirname "$self")")/.venv}/bin/horovodrun}"
  PATH="$bin:$PATH" launch_on_host 1 "$horovodrun" --gloo --network-interfaces bed0 \
    --host-discovery-script "$bin/discover-hosts" "$@"
}

slurm_conf() { echo "$state/slurm/slurm.conf"; }

slurm_up() {
  local n dir
  n="$(count)"
  [ "$n" -gt 0 ] || die "no hosts up (launch/hosts.sh up)"
  dir="$state/slurm"
  if [ -f "$(slurm_conf)" ] && [ "$(slurm_command sinfo -h -N -o %t 2>/dev/null | grep -cE 'idle|mix|alloc')" = "$n" ]; then
    return 0
  fi
  command -v slurmctld >/dev/null || die "slurm up: Debian's slurm-wlm is not installed (.ci/slurm.sh)"
  pgrep -x munged >/dev/null || die "slurm up: munged is not running (.ci/slurm.sh starts it)"
  mkdir -p "$dir/log" "$dir/ctld"
  # Every daemon shares this machine's file system: whatever a slurmd or its steps write per
  # node must have the node's name in its path (%n), the PMIx plugin's directories included
  # (they live under TmpFS); two slurmd writing the same /tmp/spmix_appdir_* fail a launch.
  {
    echo "ClusterName=pcasgd-hosts"
    echo "SlurmctldHost=$(name 1)($(address 1))"
    echo "SlurmUser=root"
    echo "AuthType=auth/munge"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "SlurmdParameters=config_overrides"
    echo "ReturnToService=2"
    echo "MpiDefault=none"
    echo "StateSaveLocation=$dir/ctld"
    echo "SlurmdSpoolDir=$dir/spool-%n"
    echo "TmpFS=$dir/tmp-%n"
    echo "SlurmctldPidFile=$dir/slurmctld.pid"
    echo "SlurmdPidFile=$dir/slurmd-%n.pid"
    echo "SlurmctldLogFile=$dir/log/slurmctld.log"
    echo "SlurmdLogFile=$dir/log/slurmd-%n.log"
    for k in $(seq 1 "$n"); do
      echo "NodeName=$(name "$k") NodeAddr=$(address "$k") CPUs=8 RealMemory=8000 State=UNKNOWN"
    done
    echo "PartitionName=hosts Nodes=node[1-$n] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
  } > "$(slurm_conf)"
  on_host 1 env SLURM_CONF="$(slurm_conf)" slurmctld
  for k in $(seq 1 "$n"); do
    mkdir -p "$dir/spool-$(name "$k")" "$dir/tmp-$(name "$k")"
    on_host "$k" env SLURM_CONF="$(slurm_conf)" slurmd -N "$(name "$k")"
  done
  for _ in $(seq 1 60); do
    if [ "$(slurm_command sinfo -h -N -o %t 2>/dev/null | grep -cE 'idle|mix|alloc')" = "$n" ]; then
      echo "launch/hosts.sh: Slurm up on $n hosts (controller on $(name 1); SLURM_CONF=$(slurm_conf))"
      return 0
    fi
    sleep 0.5
  done
  die "slurm up: the nodes did not come up; see $dir/log/"
}

slurm_command() {
  [ -f "$(slurm_conf)" ] || die "no Slurm on the hosts (launch/hosts.sh slurm up)"
  eval "$(mpi_env)"
  SLURM_CONF="$(slurm_conf)" on_host 1 "$@"
}

run_slurm() {
  case "${1:-}" in
    up) slurm_up ;;
    "") die "usage: slurm up | slurm CMD ARGS..." ;;
    *) slurm_command "$@" ;;
  esac
}

command="${1:-}"
[ -n "$command" ] || die "usage: up [N] [--rate RATE] | rate RATE|off | down | status | hostfile [SLOTS] | env | exec K CMD... | mpirun ARGS... | agent HOST CMD... | horovodrun ARGS... | slurm up | slurm CMD ARGS..."
shift
case "$command" in
  up) up "$@" ;;
  rate) set_rate "$@" ;;
  down) down ;;
  status) status ;;
  hostfile) hostfile "$@" ;;
  env) mpi_env ;;
  exec) k="$1"; shift; on_host "$k" "$@" ;;
  mpirun) run_mpirun "$@" ;;
  agent) agent "$@" ;;
  horovodrun) run_horovodrun "$@" ;;
  slurm) run_slurm "$@" ;;
  *) die "unknown command '$command'" ;;
esac
