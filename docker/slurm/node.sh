#!/usr/bin/env bash
# One task per node of a SLURM job step (`srun --ntasks-per-node=1`, see nightly.sbatch): node 0
# runs the textperf command given as arguments; every other node joins its fits
# (`textperf join-fits`, as node SLURM_NODEID) until node 0's command ends, whatever its status.
#
#   TEXTPERF_VAR_DIR=/shared/textperf/var srun --ntasks-per-node=1 node.sh retrain -c conf/x.yaml
#
# TEXTPERF_VAR_DIR is the var dir every node mounts (the fits hand off through its checkpoint
# directory); MASTER_ADDR and MASTER_PORT name node 0 for Lightning's rendezvous. The nodes
# meet through marks under $TEXTPERF_VAR_DIR/slurm/, removed once every node has stopped (kept
# when a node never came, so that it still stops if it comes late).
set -euo pipefail
: "${SLURM_NODEID:?run me as a task of a SLURM job step (srun)}"
: "${SLURM_JOB_ID:?run me as a task of a SLURM job step (srun)}"
: "${SLURM_NNODES:?run me as a task of a SLURM job step (srun)}"
: "${TEXTPERF_VAR_DIR:?set it to the var dir every node mounts}"
textperf=${TEXTPERF:-textperf}
join_wait=${TEXTPERF_JOIN_WAIT_SECONDS:-600}
# Per job step, so a rerun of the job never sees an earlier step's marks.
marks="$TEXTPERF_VAR_DIR/slurm/job-$SLURM_JOB_ID.${SLURM_STEP_ID:-0}"

if [ "$SLURM_NODEID" != 0 ]; then
    ready="$marks.node-$SLURM_NODEID.ready"
    trap 'rm -f "$ready"' EXIT # once no node watches, node 0 removes the step's end mark
    status=0
    "$textperf" join-fits --until "$marks.ended" --ready "$ready" || status=$?
    exit "$status"
fi

watching() { find "$(dirname "$marks")" -name "$(basename "$marks").node-*.ready" 2>/dev/null | wc -l; }
others=$((SLURM_NNODES - 1))

# A fit handed off before a node watches is never joined by it: wait for every other node.
status=0
all_watched=1
waited=0
echo "node 0: waiting for $others other node(s) to watch for fits"
until [ "$(watching)" -ge "$others" ]; do
    if [ "$waited" -ge "$join_wait" ]; then
        echo "node 0: only $(watching) of $others other node(s) watching after" \
            "${join_wait} s; not running: textperf $*" >&2
        status=1
        all_watched=0
        break
    fi
    sleep 1
    waited=$((waited + 1))
done
if [ "$all_watched" = 1 ]; then
    echo "node 0: $others other node(s) watching after $waited s; running: textperf $*"
    "$textperf" "$@" || status=$?
fi
mkdir -p "$(dirname "$marks")"
touch "$marks.ended" # the other nodes stop joining, whether the run succeeded or not
if [ "$all_watched" = 0 ]; then
    exit "$status" # a node that starts late still needs the end mark to stop: it stays
fi
# Every node watched: each removes its ready mark as it stops; then the end mark can go.
waited=0
until [ "$(watching)" -eq 0 ] || [ "$waited" -ge "$join_wait" ]; do
    sleep 1
    waited=$((waited + 1))
done
if [ "$(watching)" -eq 0 ]; then
    rm -f "$marks.ended"
else
    echo "node 0: $(watching) node(s) still watching after ${join_wait} s; marks left" \
        "under $(dirname "$marks")" >&2
fi
exit "$status"
