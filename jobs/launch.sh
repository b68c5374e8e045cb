#!/usr/bin/env bash
# Sourced by the jobs/*.sbatch scripts: run `mpinn train` under the launcher, forward
# Slurm's warning signals to it, and requeue the job when it stopped on one (if asked).
#
# Settings (environment, or set in the .sbatch script before sourcing this file):
#   MPINN_JOB       the job file (default: jobs/digits.toml)
#   MPINN_LAUNCH    how to start the ranks: "srun --mpi=pmi2" (default; the site's MPI built
#                   for Slurm), or "mpirun" (the MPI's own launcher, one rank per task;
#                   the dependable choice for the PyPI mpich wheel, see docs/clusters.md)
#   MPINN_RUN_DIR   the run directory (default: runs/<job name>-<job id>; a requeued job keeps
#                   its id, so it finds its checkpoints and continues with --resume auto)
#   MPINN_REQUEUE   1: `scontrol requeue` this job when it stopped on a signal
#   MPINN_ARGS      more arguments for `mpinn train` (e.g. "--set training.epochs=5")
set -u
job=${MPINN_JOB:-jobs/digits.toml}
run_dir=${MPINN_RUN_DIR:-runs/${SLURM_JOB_NAME:-mpinn}-${SLURM_JOB_ID:-local}}
launch=${MPINN_LAUNCH:-srun --mpi=pmi2}
[ "$launch" = mpirun ] && launch="mpirun -n ${SLURM_NTASKS:-1}"
mkdir -p "$run_dir"
echo "mpinn job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
     "${SLURM_NTASKS:-1} tasks, run directory $run_dir"

# The batch shell gets the signal (--signal=B:...); the ranks must get it too: they agree
# at the next step boundary, rank 0 checkpoints, and mpinn exits with 128 + the signal.
# srun would take a TERM as "cancel the step", so under srun the job's steps are signalled
# through Slurm; mpirun forwards signals to its ranks itself.
forward() {
    if [ "${launch%% *}" = srun ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        scancel --signal="$1" "$SLURM_JOB_ID"
    elif [ -n "${child:-}" ]; then
        kill -s "$1" "$child" 2>/dev/null
    fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# shellcheck disable=SC2086  # MPINN_LAUNCH and MPINN_ARGS are word lists on purpose
$launch mpinn train "$job" --resume auto --set "run.directory='$run_dir'" ${MPINN_ARGS:-} &
child=$!
status=0
while true; do  # a trapped signal interrupts `wait`; wait again for the real exit
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break
done
if [ "$status" -eq 138 ] || [ "$status" -eq 143 ]; then
    echo "mpinn stopped on a signal (exit $status); a checkpoint is in $run_dir"
    if [ "${MPINN_REQUEUE:-0}" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        scontrol requeue "$SLURM_JOB_ID"
    fi
fi
exit "$status"
