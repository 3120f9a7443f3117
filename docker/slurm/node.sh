#!/usr/bin/env bash
# One task per node of a SLURM job step (`srun --ntasks-per-node=1`, see nightly.sbatch): node 0
# runs the textperf command given as arguments; every other node joins its fits
# (`textperf join-fits`, as node SLURM_NODEID) until node 0's command ends, whatever its status.
#
#   TEXTPERF_VAR_DIR=/shared/textperf/var srun --ntasks-per-node=1 node.sh retrain -c conf/x.yaml
#
# TEXTPERF_VAR_DIR is the var dir every node mounts (the fits hand off through its checkpoint
# directory); MASTER_ADDR and MASTER_PORT name node 0 for Lightning's rendezvous.
set -euo pipefail
: "${SLURM_NODEID:?run me as a task of a SLURM job step (srun)}"
: "${SLURM_JOB_ID:?run me as a task of a SLURM job step (srun)}"
: "${TEXTPERF_VAR_DIR:?set it to the var dir every node mounts}"
textperf=${TEXTPERF:-textperf}
# Per job step, so a rerun of the job never sees an earlier step's mark.
ended="$TEXTPERF_VAR_DIR/slurm/job-$SLURM_JOB_ID.${SLURM_STEP_ID:-0}.ended"

if [ "$SLURM_NODEID" = 0 ]; then
    status=0
    "$textperf" "$@" || status=$?
    mkdir -p "$(dirname "$ended")"
    touch "$ended"  # the other nodes stop joining, whether the run succeeded or not
    exit "$status"
fi
exec "$textperf" join-fits --until "$ended"
