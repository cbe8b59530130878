#!/usr/bin/env bash
# A real single-node SLURM on this machine, for mixcli's SLURM tests and CI: installs Debian's slurm-wlm
# and munge (apt-get, as root), writes a minimal slurm.conf for this host, starts munged, slurmctld and
# slurmd (no systemd needed). Idempotent: a running cluster is left as it is. Exits non-zero with one line
# saying why when it cannot (not root, no apt-get, a daemon that does not come up).
#   bash scripts/slurm_up.sh      # then: sinfo; sbatch ...; bash scripts/slurm_down.sh
set -uo pipefail

fail() { echo "slurm_up: $*" >&2; exit 1; }

if command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  echo "slurm_up: already running ($(sinfo -h -o '%N %T %c CPUs'))"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || fail "needs root (apt-get, /etc/slurm, the daemons)"

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || fail "no apt-get here: install slurm-wlm and munge by hand"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge) >/tmp/slurm_up.apt.log 2>&1 \
    || fail "apt-get install slurm-wlm munge failed (see /tmp/slurm_up.apt.log)"
fi

host=$(hostname -s)
cpus=$(nproc --all)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)

# munge: a key, its run directory, the daemon
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none || fail "cannot write /etc/munge/munge.key"
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null
chmod 0700 /etc/munge /var/lib/munge /var/log/munge; chmod 0755 /run/munge; chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged || /usr/sbin/munged --force || fail "munged did not start"
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null 2>&1 || fail "munge does not answer (munged: see /var/log/munge)"

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
cat > /etc/slurm/slurm.conf <<CONF
# written by mixcli's scripts/slurm_up.sh: one node, this host
ClusterName=mixcli
SlurmctldHost=${host}
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
MinJobAge=600
SchedulerParameters=defer_batch=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${host} CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
cat > /etc/slurm/cgroup.conf <<CONF
CgroupPlugin=cgroup/v1
CgroupAutomount=no
CONF

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -i || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"
for _ in $(seq 100); do
  state=$(timeout 5 sinfo -h -o %T 2>/dev/null | head -1)
  case "$state" in idle|mixed|allocated) echo "slurm_up: running: $(sinfo -h -o '%N %T %c CPUs')"; exit 0;; esac
  case "$state" in down*|drain*|unk*) scontrol update nodename="$host" state=resume >/dev/null 2>&1;; esac
  sleep 0.3
done
fail "the node did not become idle (state: ${state:-no answer}); see /var/log/slurm/slurmctld.log and slurmd.log"
