#!/usr/bin/env bash
# Stops what scripts/slurm_up.sh started: slurmd, slurmctld, munged (by their pid files). Leaves the
# packages installed; the next slurm_up.sh starts them again in seconds.
set -u
stop() {  # stop NAME PIDFILE
  local pid
  pid=$(cat "$2" 2>/dev/null) || pid=$(pgrep -x "$1")
  [ -n "$pid" ] || return 0
  kill $pid 2>/dev/null
  for _ in $(seq 50); do kill -0 $pid 2>/dev/null || return 0; sleep 0.1; done
  kill -9 $pid 2>/dev/null
}
command -v scancel >/dev/null 2>&1 && timeout 10 scancel --user "$(id -un)" 2>/dev/null
stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
stop munged /run/munge/munged.pid
echo "slurm_down: stopped"
