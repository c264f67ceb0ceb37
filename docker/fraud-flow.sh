#!/bin/sh
# One process of the scoring flow's Bytewax cluster, with recovery. The image's command;
# docker/compose.yaml and the k8s StatefulSet run it.
#
#   FLOW_PROCESS_ID           this process's index (default: the number ending the host
#                             name, e.g. 1 for the StatefulSet pod fraud-score-1)
#   FLOW_ADDRESSES            "host0:2101;host1:2101": every process, in process-id order
#                             (unset: a single process)
#   FLOW_ADDRESS_TEMPLATE     "fraud-score-{i}.fraud-score-headless:2101", FLOW_ADDRESSES
#                             unset or empty: one address per replica of this pod's
#                             StatefulSet, read from the Kubernetes API; the flow restarts
#                             cleanly when the count changes (k8s/overlays/autoscale,
#                             lifecycle/cluster.py; FLOW_CLUSTER_WATCH_SECONDS, default 5)
#   FLOW_RECOVERY_DIR         recovery partitions (default /data/recovery)
#   FLOW_RECOVERY_PARTITIONS  how many process 0 creates, once, when its recovery
#                             directory is empty (default 1); fixed from then on
#   FLOW_SNAPSHOT_SECONDS     snapshot interval (default 5); whatever it is, a single
#                             process commits its first snapshot about a second after
#                             its first output, so a crash loop still makes progress
#                             (lifecycle/process.py, "First snapshot")
#
# With FRAUD_CHANGELOG=on, process 0 copies its recovery partitions to the topic
# recovery-backup every FRAUD_RECOVERY_BACKUP_SECONDS (30; 0: never), and a process 0
# that finds no partitions (a new or lost volume) restores the latest copies before it
# creates any (changelog/recovery.py); Bytewax keeps old snapshots that long (-b).
#
# FLOW_*, not FRAUD_*: the flow refuses FRAUD_* variables it does not know.
#
# Signals: this script ends by exec-ing Python, so no shell stays in between: under the
# image's tini (PID 1) the flow is its direct child and receives SIGTERM/SIGINT; run
# without an init (docker run --entrypoint fraud-flow) Python itself is PID 1, which the
# flow handles too (it installs its own handlers: lifecycle/process.py). First signal: a
# clean stop (exit 0, final snapshot); second signal or 25 s: exit at once. Stop every
# process of a cluster together: one process cannot leave a Bytewax cluster on its own.
set -eu

recovery_dir="${FLOW_RECOVERY_DIR:-/data/recovery}"
partitions="${FLOW_RECOVERY_PARTITIONS:-1}"
snapshot="${FLOW_SNAPSHOT_SECONDS:-5}"
host="${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}"
process_id="${FLOW_PROCESS_ID:-${host##*-}}"

case "$process_id" in
    '' | *[!0-9]*)
        echo "fraud-flow: cannot tell the process id from host name '$host'; set FLOW_PROCESS_ID" >&2
        exit 2 ;;
esac

backup=0
if [ "${FRAUD_CHANGELOG:-off}" = on ]; then
    backup="${FRAUD_RECOVERY_BACKUP_SECONDS:-30}"
fi
set -- -r "$recovery_dir" -s "$snapshot" -b "$backup"
if [ -z "${FLOW_ADDRESSES:-}" ] && [ -n "${FLOW_ADDRESS_TEMPLATE:-}" ]; then
    FLOW_ADDRESSES=$(python -m lifecycle.cluster addresses) || exit 2
    export FLOW_ADDRESSES
fi
if [ -n "${FLOW_ADDRESSES:-}" ]; then
    count=$(printf '%s\n' "$FLOW_ADDRESSES" | tr ';' '\n' | grep -c .)
    if [ "$process_id" -ge "$count" ]; then
        echo "fraud-flow: process id $process_id but FLOW_ADDRESSES lists $count processes;" \
            "the number of processes (StatefulSet replicas) and the address list must match" >&2
        exit 2
    fi
    set -- "$@" -i "$process_id" -a "$FLOW_ADDRESSES"
fi

mkdir -p "$recovery_dir"
# Process 0 holds the recovery partitions; the others snapshot into them over the
# cluster's connections. Created once: the count cannot change afterwards. (Not "the
# directory is empty": the flow's lock file, .lock, stays there between runs.)
has_partitions() {
    for part in "$recovery_dir"/*.sqlite3; do
        [ -e "$part" ] && return 0
    done
    return 1
}
if [ "$process_id" -eq 0 ] && ! has_partitions && [ "$backup" != 0 ]; then
    # a lost volume: the latest copies, if any (a broker error stops here: never start over)
    python -m changelog.recovery restore "$recovery_dir" || exit 1
fi
if [ "$process_id" -eq 0 ] && ! has_partitions; then
    echo "fraud-flow: creating $partitions recovery partition(s) in $recovery_dir" >&2
    python -m bytewax.recovery "$recovery_dir" "$partitions"
fi

# numba's compiled kernels: an empty cache (a fresh volume) starts from the image's, built
# with the image (state/kernels/warm.py), instead of compiling for ~40 s.
if [ -n "${NUMBA_CACHE_DIR:-}" ] && [ -d /opt/numba-cache ] && [ ! -d "$NUMBA_CACHE_DIR" ]; then
    mkdir -p "$NUMBA_CACHE_DIR" && cp -R /opt/numba-cache/. "$NUMBA_CACHE_DIR"/
fi

echo "fraud-flow: process $process_id: python -m bytewax.run flows.score $*" >&2
exec python -m bytewax.run flows.score "$@"
