#!/usr/bin/env bash
# Start a single-node Slurm (munged + slurmctld + slurmd) on localhost, for trying deploy/ on a laptop and
# for the survey-infer `slurm` tests. Installs Debian's slurm-wlm and munge with apt-get if they are missing
# (root only). Everything it writes lives in one state directory; stop.sh stops exactly the PIDs recorded there.
#
# usage: deploy/local-slurm/start.sh [--background] [--state-dir DIR] [--timeout SECONDS] [--no-install]
#                                    [--cpus N --memory-mb M] [--no-etc-conf]
#
#   --background    return at once; the start continues detached, logging to STATE/start.log, and writes
#                   STATE/ready when the node is idle (or STATE/failed with the reason). For CI.
#   --state-dir     where config, spool, state, logs and PIDs go (default $SURVEY_INFER_SLURM_DIR or
#                   /tmp/survey-infer-slurm)
#   --timeout       seconds to wait for the node to become idle (default 600)
#   --no-install    never run apt-get; fail if slurm-wlm/munge are missing
#   --cpus/--memory-mb  declare a different node size than `slurmd -C` reports (oversubscribe a small laptop)
#   --no-etc-conf   do not link /etc/slurm/slurm.conf to the generated config (then `source STATE/env.sh`)
#
# After it returns (foreground mode): `source STATE/env.sh` (only needed with --no-etc-conf), then
# `sinfo`, `sbatch`, `squeue` work as on a real cluster. Stop with deploy/local-slurm/stop.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${SURVEY_INFER_SLURM_DIR:-/tmp/survey-infer-slurm}
TIMEOUT=600
BACKGROUND=0
INSTALL=1
ETC_CONF=1
CPUS=""
MEMORY_MB=""
CTLD_PORT=${SURVEY_INFER_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SURVEY_INFER_SLURMD_PORT:-6818}
ARGS=("$@")

while [ $# -gt 0 ]; do
    case "$1" in
        --background) BACKGROUND=1 ;;
        --state-dir) STATE=$2; shift ;;
        --timeout) TIMEOUT=$2; shift ;;
        --no-install) INSTALL=0 ;;
        --no-etc-conf) ETC_CONF=0 ;;
        --cpus) CPUS=$2; shift ;;
        --memory-mb) MEMORY_MB=$2; shift ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "start.sh: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
CONF=$STATE/slurm.conf
MUNGE_DIR=$STATE/munge
MUNGE_SOCKET=$MUNGE_DIR/run/munge.socket.2
export SLURM_CONF=$CONF

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "[local-slurm $(date +%H:%M:%S)] $*"; }
fail() {
    echo "start.sh: error: $*" >&2
    echo "$*" > "$STATE/failed"
    exit 1
}

# ---------------------------------------------------------------- background mode: detach and return
if [ "$BACKGROUND" = 1 ]; then
    mkdir -p "$STATE/run"
    rm -f "$STATE/ready" "$STATE/failed"
    fg_args=()
    for a in "${ARGS[@]}"; do [ "$a" = --background ] || fg_args+=("$a"); done
    # the detached copy gets the resolved state dir so that both agree
    setsid nohup "$HERE/start.sh" "${fg_args[@]}" --state-dir "$STATE" > "$STATE/start.log" 2>&1 < /dev/null &
    echo $! > "$STATE/run/start.pid"
    log "starting in the background (pid $!); log $STATE/start.log; ready-file $STATE/ready"
    exit 0
fi

rm -f "$STATE/ready" "$STATE/failed"
T_START=$(now)

# ---------------------------------------------------------------- already running?
alive() {  # alive NAME: the recorded PID of NAME is running and is NAME
    local f=$STATE/pids/$1
    [ -s "$f" ] || return 1
    local pid
    pid=$(cat "$f")
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}
wait_exec() {  # wait_exec NAME: wait until the PID just recorded for NAME has exec'd NAME (up to 10 s)
    # Right after `setsid NAME ... &` the child is still the forked shell (comm start.sh/setsid) for a moment;
    # checking `alive` then would report a daemon that is starting as "exited".
    local pid
    pid=$(cat "$STATE/pids/$1")
    for _ in $(seq 100); do
        alive "$1" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
if alive munged && alive slurmctld && alive slurmd && sinfo -h >/dev/null 2>&1; then
    log "already running (state $STATE)"
    touch "$STATE/ready"
    exit 0
fi
for d in munged slurmctld slurmd; do
    if alive "$d"; then fail "a $d started from $STATE is still running; run deploy/local-slurm/stop.sh first"; fi
done

# ---------------------------------------------------------------- install (root, Debian) if missing
missing=()
for b in munged mungekey munge slurmctld slurmd sinfo sbatch; do
    command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
INSTALL_S=0
if [ ${#missing[@]} -gt 0 ]; then
    [ "$INSTALL" = 1 ] || fail "missing ${missing[*]}; install slurm-wlm and munge (or drop --no-install)"
    [ "$(id -u)" = 0 ] || fail "missing ${missing[*]}; installing slurm-wlm and munge needs root (apt-get)"
    command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get: install Slurm and munge yourself"
    log "installing slurm-wlm and munge with apt-get (missing: ${missing[*]})"
    t0=$(now)
    # no init scripts may start system daemons during the install: we start our own below
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    set +e
    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge
    rc=$?
    set -e
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ $rc = 0 ] || fail "apt-get install slurm-wlm munge failed (exit $rc)"
    INSTALL_S=$(elapsed "$t0")
    log "installed in ${INSTALL_S} s: $(slurmctld -V)"
fi
[ "$(id -u)" = 0 ] || fail "the local Slurm runs its daemons as root (SlurmUser=root); run start.sh as root"

# ---------------------------------------------------------------- directories
mkdir -p "$STATE"/{pids,run,log,ctld,slurmd} "$MUNGE_DIR/run"
# munged insists on a socket directory that only its owner can write
chmod 0755 "$STATE" "$MUNGE_DIR" "$MUNGE_DIR/run"
chmod 0700 "$STATE/ctld" "$STATE/slurmd"
rm -rf "${STATE:?}/ctld/"* "${STATE:?}/slurmd/"*   # a clean controller state each start

# ---------------------------------------------------------------- munged
if [ ! -s "$MUNGE_DIR/munge.key" ]; then
    mungekey --create --keyfile="$MUNGE_DIR/munge.key" 2>/dev/null || \
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
fi
chmod 0600 "$MUNGE_DIR/munge.key"
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
setsid munged --foreground --force \
    --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$MUNGE_DIR/run/munged.pid" --seed-file="$MUNGE_DIR/munged.seed" \
    --log-file="$STATE/log/munged.log" > "$STATE/log/munged.out" 2>&1 < /dev/null &
echo $! > "$STATE/pids/munged"
wait_exec munged || fail "munged exited at start (see $STATE/log/munged.log, $STATE/log/munged.out)"
for _ in $(seq 100); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 || \
    fail "munged did not answer on $MUNGE_SOCKET (see $STATE/log/munged.log, $STATE/log/munged.out)"
log "munged up (pid $(cat "$STATE/pids/munged"))"

# ---------------------------------------------------------------- slurm.conf
NODE_HW=$(slurmd -C 2>/dev/null | head -n 1 | sed -e 's/^NodeName=[^ ]* *//')
[ -n "$NODE_HW" ] || fail "slurmd -C did not report this machine's hardware"
EXTRA_CONF=""
if [ -n "$CPUS" ] || [ -n "$MEMORY_MB" ]; then
    [ -n "$CPUS" ] || CPUS=$(echo "$NODE_HW" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
    [ -n "$MEMORY_MB" ] || MEMORY_MB=$(echo "$NODE_HW" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    NODE_HW="CPUs=$CPUS RealMemory=$MEMORY_MB"
    EXTRA_CONF="SlurmdParameters=config_overrides"
fi
node_cpus=$(echo "$NODE_HW" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
node_mem=$(echo "$NODE_HW" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
def_mem=$(( node_mem / node_cpus ))
[ "$def_mem" -gt 2048 ] && def_mem=2048
sed -e "s|@STATE@|$STATE|g" -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    -e "s|@NODE_HW@|$NODE_HW|g" -e "s|@DEF_MEM_PER_CPU@|$def_mem|g" \
    "$HERE/slurm.conf.in" > "$CONF"
[ -z "$EXTRA_CONF" ] || echo "$EXTRA_CONF" >> "$CONF"
cat > "$STATE/env.sh" <<EOF
# source this to talk to the local Slurm started from $STATE
export SLURM_CONF=$CONF
EOF
log "wrote $CONF (node: $NODE_HW)"

# plain `sinfo` (no SLURM_CONF) finds /etc/slurm/slurm.conf: link it when nothing is there
rm -f "$STATE/etc-link"
if [ "$ETC_CONF" = 1 ]; then
    if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
        echo /etc/slurm/slurm.conf > "$STATE/etc-link"
    elif [ ! -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
        mkdir -p /etc/slurm
        ln -s "$CONF" /etc/slurm/slurm.conf
        echo /etc/slurm/slurm.conf > "$STATE/etc-link"
    else
        log "note: /etc/slurm/slurm.conf exists and is not ours; use 'source $STATE/env.sh'"
    fi
fi

# ---------------------------------------------------------------- slurmctld, slurmd (foreground, detached)
setsid slurmctld -D -c -f "$CONF" > "$STATE/log/slurmctld.out" 2>&1 < /dev/null &
echo $! > "$STATE/pids/slurmctld"
wait_exec slurmctld || fail "slurmctld exited at start (see $STATE/log/slurmctld.log, $STATE/log/slurmctld.out)"
for _ in $(seq 300); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q UP || \
    fail "slurmctld did not answer (see $STATE/log/slurmctld.log, $STATE/log/slurmctld.out)"
log "slurmctld up (pid $(cat "$STATE/pids/slurmctld")) after $(elapsed "$T_START") s"

setsid slurmd -D -N localhost -f "$CONF" > "$STATE/log/slurmd.out" 2>&1 < /dev/null &
echo $! > "$STATE/pids/slurmd"
wait_exec slurmd || fail "slurmd exited at start (see $STATE/log/slurmd.log, $STATE/log/slurmd.out)"
log "slurmd started (pid $(cat "$STATE/pids/slurmd")); waiting for the node to become idle (timeout ${TIMEOUT} s)"

# ---------------------------------------------------------------- wait for an idle node
deadline=$(( $(date +%s) + TIMEOUT ))
state=""
while :; do
    alive slurmctld || fail "slurmctld exited (see $STATE/log/slurmctld.log)"
    alive slurmd || fail "slurmd exited (see $STATE/log/slurmd.log, $STATE/log/slurmd.out)"
    state=$(sinfo -h -N -n localhost -o %T 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle|mixed|allocated) break ;;
        drain*|down*|fail*)
            # a node that was down when the controller started comes back after registering
            scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || \
        fail "node not idle after ${TIMEOUT} s (state '$state'; reason: $(sinfo -h -R -o %E 2>/dev/null))"
    sleep 1
done
ANSWER_S=$(elapsed "$T_START")
cat > "$STATE/timings.json" <<EOF
{"install_s": $INSTALL_S, "start_to_idle_s": $ANSWER_S}
EOF
echo "$ANSWER_S" > "$STATE/ready"
log "ready: node localhost is $state after ${ANSWER_S} s (install ${INSTALL_S} s); stop with $HERE/stop.sh"
sinfo
