#!/bin/bash
# A Slurm job that compresses every file listed in files.csv (a CSV with a "file" header),
# as many at once as the job has CPUs, and that resumes where it stopped when it is
# preempted or hits its time limit.
#
#   sbatch examples/slurm_job.sh           # submit; resubmit (or let Slurm requeue) to resume
#   TAYLOR="python -m taylor" bash examples/slurm_job.sh   # try it outside Slurm
#
#SBATCH --job-name=taylor-gzip
#SBATCH --cpus-per-task=8
#SBATCH --mem-per-cpu=1G
#SBATCH --time=01:00:00
#SBATCH --requeue                # a preempted job goes back to the queue: it resumes from the journal
#SBATCH --open-mode=append       # keep the output of every attempt in one log
#SBATCH --signal=B:TERM@60       # at the time limit, SIGTERM this script 60 s before the kill

set -u
cd "${SLURM_SUBMIT_DIR:-.}"
TAYLOR=${TAYLOR:-taylor}
JOURNAL=${JOURNAL:-gzip.journal.jsonl}

# -j is left to its default, 0: the CPUs this job was given (affinity, cgroup, SLURM_CPUS_PER_TASK).
# --journal + --resume: tasks already done in an earlier attempt are skipped; the rest run.
# --keep-going: one bad file does not stop the others; the exit code still says it (1).
$TAYLOR run \
    --command 'gzip -k -f -9 {file}' \
    --from files.csv \
    --journal "$JOURNAL" --resume \
    --keep-going \
    --timeout 1800 \
    --logdir "logs" \
    --report "report-${SLURM_JOB_ID:-local}.json" &
taylor_pid=$!

# Slurm signals the batch shell; pass the signal on. taylor stops its tasks and every program
# they started, writes the journal and the report of what finished, and exits with 143.
trap 'kill -TERM "$taylor_pid" 2>/dev/null' TERM INT
wait "$taylor_pid"
status=$?
if kill -0 "$taylor_pid" 2>/dev/null; then  # the trap interrupted the wait: wait for taylor's own status
    wait "$taylor_pid"
    status=$?
fi

case $status in
    0)   echo "taylor: every file is compressed" ;;
    1)   echo "taylor: some files failed; see $JOURNAL and logs/ (resubmit after fixing them: done files are skipped)" ;;
    143) echo "taylor: stopped by SIGTERM; $JOURNAL holds every finished file"
         if [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null; then
             scontrol requeue "$SLURM_JOB_ID"   # run again later; --resume skips what is done
         fi ;;
    *)   echo "taylor: exit status $status (2: bad options or input, see above)" ;;
esac
exit $status
