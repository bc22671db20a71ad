#!/usr/bin/env bash
# slurm-local.sh - a real single-node SLURM cluster on localhost for tests, on a
# Debian 12 machine/container run as root WITHOUT systemd or cgroup control.
#   up     install what is missing, write config, start what is not running,
#          wait until the node is idle (idempotent; safe to run repeatedly)
#   down   stop the daemons this script started (by PID from their pid files)
#   purge  down + delete state/logs and the accounting database
#   status show what is running
# Env: SLURM_LOCAL_DIR  state, spool, logs, pid files (default: the one in the
#                       current slurm.conf, else /tmp/slurm-local)
#      SLURM_ACCOUNTING 1 = MariaDB + slurmdbd so that `sacct` works (default);
#                       0 = no accounting (sacct fails; submitit can't see states)
# Source: the team's checked recipe, ../shared/reference/slurm-local.md (tested there:
# fresh install x3, up/down cycles, kill -9 recovery, accounting on/off).
set -euo pipefail

CONF=/etc/slurm/slurm.conf          # default path: clients need no SLURM_CONF
DBDCONF=/etc/slurm/slurmdbd.conf
OLD_BASE=$(sed -n 's#^StateSaveLocation=\(.*\)/state$#\1#p' "$CONF" 2>/dev/null || true)
BASE=${SLURM_LOCAL_DIR:-${OLD_BASE:-/tmp/slurm-local}}
ACCT=${SLURM_ACCOUNTING:-1}
NODE=$(hostname -s)
PKGS="munge slurm-client slurmctld slurmd"
[ "$ACCT" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"

log() { echo "[slurm-local $(date +%T)] $*" >&2; }
running() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${st:0:1}" != Z ]; }
alive() { [ -s "$1" ] && running "$(cat "$1")"; }  # zombies count as dead
wait_for() { # wait_for SECONDS CMD... : poll every 0.2 s
  local n=$(( $1 * 5 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out waiting for: $*"; return 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
munge_ok() { munge -n </dev/null | unmunge >/dev/null; }

install_pkgs() {
  local p missing=""
  for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  # postinst scripts may try to start services; harmless if policy-rc.d denies it
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing >/dev/null
}

write_conf() {
  local mem cpus acct new
  mem=$(( $(free -m | awk '/^Mem:/{print $2}') * 9 / 10 ))   # under the real total
  cpus=$(nproc)
  if [ "$ACCT" = 1 ]; then
    acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819'
  else
    acct='AccountingStorageType=accounting_storage/none'
  fi
  mkdir -p /etc/slurm "$BASE/state" "$BASE/spool" "$BASE/log"
  new=$(mktemp)
  cat > "$new" <<EOF
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
# no systemd / cgroup control in the container:
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
$acct
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
# reject requests above the node's CPUs/memory at submit (else: pending forever)
EnforcePartLimits=ALL
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  if ! cmp -s "$new" "$CONF"; then
    mv "$new" "$CONF"; chmod 644 "$CONF"; CONF_CHANGED=1
  else
    rm -f "$new"
  fi
  if [ "$ACCT" = 1 ]; then
    cat > "$new" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    if ! cmp -s "$new" "$DBDCONF"; then mv "$new" "$DBDCONF"; DBD_CHANGED=1; else rm -f "$new"; fi
    chmod 600 "$DBDCONF"                      # slurmdbd refuses a readable one
  fi
}

start_munge() {
  munge_ok 2>/dev/null && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  runuser -u munge -- /usr/sbin/munged || runuser -u munge -- /usr/sbin/munged --force
  touch /run/slurm-local-started-munged
  wait_for 10 munge_ok
}

start_mariadb() {
  mariadb-admin ping >/dev/null 2>&1 || {
    install -d -o mysql -g mysql -m 755 /run/mysqld
    [ -d /var/lib/mysql/mysql ] ||
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    install -o mysql -g mysql -m 640 /dev/null "$BASE/log/mariadb.err"
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
      --pid-file=/run/mysqld/mysqld.pid --innodb-lock-wait-timeout=900 \
      --log-error="$BASE/log/mariadb.err" </dev/null >/dev/null 2>&1 &
    touch /run/slurm-local-started-mariadb
    wait_for 60 mariadb-admin ping
  }
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurm() {
  local b
  if [ -n "${CONF_CHANGED:-}" ]; then   # new config: restart what runs
    for b in ${OLD_BASE:+"$OLD_BASE"} "$BASE"; do stop_pid "$b/slurmd.pid"; stop_pid "$b/slurmctld.pid"; done
  fi
  if [ -n "${DBD_CHANGED:-}" ]; then
    for b in ${OLD_BASE:+"$OLD_BASE"} "$BASE"; do stop_pid "$b/slurmdbd.pid"; done
  fi
  if [ "$ACCT" = 1 ]; then
    alive "$BASE/slurmdbd.pid" || /usr/sbin/slurmdbd
    wait_for 60 port_open 6819
  fi
  alive "$BASE/slurmctld.pid" || /usr/sbin/slurmctld
  wait_for 30 scontrol ping
  alive "$BASE/slurmd.pid" || /usr/sbin/slurmd -N "$NODE"
  local st=""
  for _ in $(seq 1 150); do                  # up to 30 s for the node
    st=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    case "$st" in
      idle|mixed|allocated|completing) log "node $NODE is $st"; return 0 ;;
      *drain*|down*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  log "node $NODE not ready (state '$st'); see $BASE/log/"; return 1
}

stop_pid() { # stop_pid PIDFILE : TERM, wait up to 20 s, then KILL
  local f=$1 pid
  alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do running "$pid" || break; sleep 0.2; done
  running "$pid" && kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

down() {
  stop_pid "$BASE/slurmd.pid"; stop_pid "$BASE/slurmctld.pid"; stop_pid "$BASE/slurmdbd.pid"
  if [ -e /run/slurm-local-started-mariadb ]; then stop_pid /run/mysqld/mysqld.pid; rm -f /run/slurm-local-started-mariadb; fi
  if [ -e /run/slurm-local-started-munged ]; then stop_pid /run/munge/munged.pid; rm -f /run/slurm-local-started-munged; fi
  log "stopped"
}

case "${1:-up}" in
  up)
    t0=$SECONDS
    install_pkgs; log "packages ready ($((SECONDS - t0)) s)"
    write_conf
    start_munge
    [ "$ACCT" = 1 ] && start_mariadb
    start_slurm
    log "up in $((SECONDS - t0)) s"; sinfo ;;
  down) down ;;
  purge)
    down
    if [ -d /var/lib/mysql/slurm_acct_db ]; then   # needs mariadb running briefly
      start_mariadb; mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db"; down
    fi
    rm -rf "$BASE" ;;
  status)
    for d in slurmctld slurmd slurmdbd; do
      alive "$BASE/$d.pid" && echo "$d running (pid $(cat "$BASE/$d.pid"))" || echo "$d stopped"
    done
    munge_ok 2>/dev/null && echo "munged running" || echo "munged stopped"
    mariadb-admin ping >/dev/null 2>&1 && echo "mariadb running" || echo "mariadb stopped"
    sinfo 2>/dev/null || true ;;
  *) echo "usage: $0 up|down|purge|status" >&2; exit 2 ;;
esac
