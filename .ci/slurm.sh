#!/usr/bin/env bash
# Install (Debian's slurm-wlm) and start a single-node Slurm on this machine, for the tests of
# the Slurm batch scripts. Idempotent: does nothing if a controller already answers. Needs root.
set -euo pipefail
if scontrol ping 2>/dev/null | grep -q "is UP"; then
  exit 0
fi
# libpmix-dev: Slurm's mpi/pmix plugin loads libpmix.so, which only the -dev package provides.
if ! command -v slurmctld >/dev/null || ! ldconfig -p | grep -q "libpmix.so "; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm libpmix-dev >/dev/null
fi
host="$(hostname)"
cpus="$(nproc)"
mkdir -p /etc/slurm /run/munge /var/log/munge /var/lib/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown munge:munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=pcasgd-ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=8 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o "%t" 2>/dev/null | grep -qE "idle|mix|alloc"; then
    exit 0
  fi
  sleep 0.5
done
echo "pcasgd: Slurm did not come up; see /var/log/slurm/" >&2
exit 1
