#!/usr/bin/env bash
# Stop the single-node Slurm started by deploy/local-slurm/start.sh: cancel its jobs, then stop exactly the
# PIDs recorded in the state directory (slurmd, slurmctld, munged, and a still-running background start.sh).
# Never kills anything by name.
#
# usage: deploy/local-slurm/stop.sh [--state-dir DIR] [--purge]
#   --purge   also delete the state directory (config, logs, munge key)
set -uo pipefail

STATE=${SURVEY_INFER_SLURM_DIR:-/tmp/survey-infer-slurm}
PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --state-dir) STATE=$2; shift ;;
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop.sh: error: unknown option '$1'" >&2; exit 2 ;;
    esac
    shift
done
[ -d "$STATE" ] || { echo "stop.sh: nothing to stop ($STATE does not exist)"; exit 0; }
STATE=$(cd "$STATE" && pwd)
export SLURM_CONF=$STATE/slurm.conf
log() { echo "[local-slurm $(date +%H:%M:%S)] $*"; }

pid_of() {  # pid_of FILE EXPECTED_COMM: print the PID recorded in FILE if it is alive and is EXPECTED_COMM
    local f=$1 comm=$2 pid
    [ -s "$f" ] || return 1
    pid=$(cat "$f")
    [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$comm" ] || return 1
    echo "$pid"
}

stop_pid() {  # stop_pid NAME PID: SIGTERM, wait up to 15 s, then SIGKILL
    local name=$1 pid=$2
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null && log "killed $name (pid $pid)"
}

# a background start.sh still waiting for the node
if pid=$(pid_of "$STATE/run/start.pid" start.sh); then stop_pid start.sh "$pid"; fi

# cancel this cluster's jobs first, so that slurmstepd and the job processes exit through Slurm
if pid_of "$STATE/pids/slurmctld" slurmctld >/dev/null && [ -f "$SLURM_CONF" ]; then
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
    fi
fi

for name in slurmd slurmctld munged; do
    if pid=$(pid_of "$STATE/pids/$name" "$name"); then stop_pid "$name" "$pid"; fi
    rm -f "$STATE/pids/$name"
done

# the /etc/slurm/slurm.conf link, only if start.sh made it
if [ -s "$STATE/etc-link" ]; then
    link=$(cat "$STATE/etc-link")
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$STATE/slurm.conf" ]; then rm -f "$link"; fi
    rm -f "$STATE/etc-link"
fi
rm -f "$STATE/ready"
if [ "$PURGE" = 1 ]; then rm -rf "$STATE"; log "removed $STATE"; fi
exit 0
