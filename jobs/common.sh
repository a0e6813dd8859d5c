# shellcheck shell=bash
# Shared body of the jobs/*.sbatch scripts: site setup, MPI environment, launcher, the step
# runner with SIGTERM relay. Sourced, never run; expects REPO (repository root) and JOB_NAME.
#
# Edit the "site setup" block once for your cluster; the #SBATCH lines stay in each script.
#
# Environment read here (all optional):
#   HPCINV_VENV        a virtual environment to activate
#   HPCINV_PYTHON      python with hpcinv installed (default: python on PATH after the setup)
#   HPCINV_MPI_ENV     cray | openmpi | mvapich: source jobs/env/<name>.sh (CUDA-aware MPI)
#   HPCINV_BACKEND     auto | cupy | host (passed to hpcinv / the benchmarks)
#   HPCINV_LAUNCHER    launch command replacing srun, e.g. "mpiexec -n 2"; "{n}" in it is
#                      replaced by the rank count of the step (the scaling scripts use this)
#   HPCINV_GPU_BIND    0: do not wrap the command in jobs/gpu_bind.sh
#   HPCINV_CPU_BIND    0: do not wrap it in jobs/cpu_bind.sh (OpenMP binding per rank);
#                      1: bind threads even when the rank's CPUs do not look like its own
#   HPCINV_CACHE_DIR, CUPY_CACHE_DIR   kernel caches (default under SLURM: see hpcinv_caches)
#   HPCINV_CACHE_ROOT  where the default caches go (default $SCRATCH, else a per-job directory)
#   HPCINV_ARGS        extra arguments appended to the step's command (word-split)
#   HPCINV_TAG         scaling scripts: tag stored in every JSON line and selected in the plot
#   HPCINV_PLOT_ARGS   scaling scripts: extra plot_scaling.py options, e.g. "--kind both --model"

# ---- site setup: edit for your cluster (modules, Python environment) -----------------------
# module load PrgEnv-gnu cray-mpich cudatoolkit craype-accel-nvidia80   # e.g. a Cray EX system
# module load gcc openmpi cuda                                         # e.g. a generic cluster
if [[ -n "${HPCINV_VENV:-}" ]]; then
    # shellcheck disable=SC1091
    source "$HPCINV_VENV/bin/activate"
fi
PYTHON=${HPCINV_PYTHON:-python}

# ---- CPU-only jobs -------------------------------------------------------------------------
# `sbatch --gpus-per-node=0 jobs/X.sbatch` (or SBATCH_GPUS_PER_NODE=0) asks for no GPUs: run
# the host backend, and keep the env/*.sh files from switching on GPU support (Cray MPICH aborts
# in MPI_Init with MPICH_GPU_SUPPORT_ENABLED=1 on nodes without the GTL library).
if [[ -z "${HPCINV_BACKEND:-}" && -n "${SLURM_JOB_ID:-}" \
      && ( "${SLURM_GPUS_PER_NODE:-}" == 0 || "${SLURM_GPUS_PER_NODE:-}" == *:0 ) ]]; then
    export HPCINV_BACKEND=host
    echo "$JOB_NAME: no GPUs requested (--gpus-per-node=0): HPCINV_BACKEND=host" >&2
fi

# ---- MPI environment for CUDA-aware MPI (jobs/env/*.sh) ------------------------------------
if [[ -n "${HPCINV_MPI_ENV:-}" ]]; then
    case "$HPCINV_MPI_ENV" in
        cray|cray-mpich) _hpcinv_env=cray-mpich ;;
        openmpi|ompi)    _hpcinv_env=openmpi ;;
        mvapich|mvapich2) _hpcinv_env=mvapich ;;
        *) echo "$JOB_NAME: HPCINV_MPI_ENV must be cray, openmpi or mvapich," \
                "got '$HPCINV_MPI_ENV'" >&2
           exit 2 ;;
    esac
    # shellcheck disable=SC1090
    source "$REPO/jobs/env/$_hpcinv_env.sh"
fi

# BACKEND and EXTRA are used by the scripts that source this file.
BACKEND=()
# shellcheck disable=SC2034
if [[ -n "${HPCINV_BACKEND:-}" ]]; then BACKEND=(--backend "$HPCINV_BACKEND"); fi
EXTRA=()
if [[ -n "${HPCINV_ARGS:-}" ]]; then read -r -a EXTRA <<< "$HPCINV_ARGS"; fi

under_slurm() { [[ -n "${SLURM_JOB_ID:-}" ]]; }

# ---- kernel caches -------------------------------------------------------------------------
# hpcinv_caches: under SLURM, point HPCINV_CACHE_DIR (host kernels) and CUPY_CACHE_DIR (CuPy's
# compiled GPU kernels) away from $HOME, which is slow, small or read-only on compute nodes,
# keeping any value the user set:
#   $HPCINV_CACHE_ROOT or $SCRATCH set: <root>/hpcinv-cache/<cpu>/{hpcinv,cupy}, kept between
#     jobs; <cpu> is a hash of the CPU model, since host kernels are built with -march=native
#     and a library from one CPU type can stop with "illegal instruction" on another;
#   otherwise: ${TMPDIR:-/tmp}/hpcinv-cache-<user>-<jobid>/{hpcinv,cupy}, one per job (and per
#     node: /tmp is node-local; every node compiles once), removed at the end of the job on
#     the batch node.
# Outside SLURM nothing is changed (hpcinv's default ~/.cache/hpcinv, CuPy's ~/.cupy).
HPCINV_CACHE_TMP=
hpcinv_caches() {
    under_slurm || return 0
    if [[ -n "${HPCINV_CACHE_DIR:-}" && -n "${CUPY_CACHE_DIR:-}" ]]; then return 0; fi
    local root=${HPCINV_CACHE_ROOT:-${SCRATCH:-}} base cpu
    if [[ -n "$root" ]]; then
        cpu=$( (grep -m1 -i "model name" /proc/cpuinfo 2>/dev/null || uname -m) \
               | md5sum | cut -c1-8)
        base=$root/hpcinv-cache/$cpu
    else
        # This job's by its name, also when an earlier attempt of a requeued job left it (the
        # requeue can kill the batch shell before its EXIT trap): removed when the chain ends.
        base=${TMPDIR:-/tmp}/hpcinv-cache-${USER:-$(id -u)}-$SLURM_JOB_ID
        HPCINV_CACHE_TMP=$base
    fi
    export HPCINV_CACHE_DIR=${HPCINV_CACHE_DIR:-$base/hpcinv}
    export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$base/cupy}
    mkdir -p "$HPCINV_CACHE_DIR" "$CUPY_CACHE_DIR" 2>/dev/null || true
}
_hpcinv_remove_cache() {
    if [[ -n "$HPCINV_CACHE_TMP" && -d "$HPCINV_CACHE_TMP" ]]; then rm -rf "$HPCINV_CACHE_TMP"; fi
}
trap _hpcinv_remove_cache EXIT
hpcinv_caches

# hpcinv_launcher [NTASKS [NNODES]]: set LAUNCH (array) for a step of NTASKS ranks on NNODES
# nodes (default: the whole job).
hpcinv_launcher() {
    local ntasks=${1:-} nnodes=${2:-}
    if [[ -n "${HPCINV_LAUNCHER:-}" ]]; then
        # Your launcher, your binding: hpcinv's host backend uses $HPCINV_NUM_THREADS, else
        # $OMP_NUM_THREADS, else the cores it may run on divided by the ranks on the node.
        local cmd=$HPCINV_LAUNCHER
        if [[ -n "$ntasks" ]]; then cmd=${cmd//\{n\}/$ntasks}; fi
        if [[ "$cmd" == *"{n}"* ]]; then
            echo "$JOB_NAME: HPCINV_LAUNCHER contains {n} but this step has no rank count" >&2
            exit 2
        fi
        read -r -a LAUNCH <<< "$cmd"
    elif under_slurm; then
        # srun gives every task its own cores (--cpu-bind=cores) where the site's task plugin
        # does affinity; jobs/cpu_bind.sh then binds the threads to them, inside each task,
        # and only if the task's CPUs really are its own (never all ranks on one core).
        # (Since Slurm 22.05 srun does not inherit --cpus-per-task from sbatch: pass it.)
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
        ntasks=${ntasks:-${SLURM_NTASKS:-}}
        LAUNCH=(srun ${ntasks:+--ntasks="$ntasks"} --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}"
                --cpu-bind=cores)
        if [[ -n "$nnodes" ]]; then LAUNCH+=(--nodes="$nnodes"); fi
    else
        echo "$JOB_NAME: not inside a SLURM job; submit with sbatch or set HPCINV_LAUNCHER," \
             "e.g. HPCINV_LAUNCHER=\"mpiexec -n 2\"" >&2
        exit 2
    fi
    if [[ "${HPCINV_CPU_BIND:-auto}" != "0" ]]; then LAUNCH+=("$REPO/jobs/cpu_bind.sh"); fi
    if [[ "${HPCINV_GPU_BIND:-1}" != "0" ]]; then LAUNCH+=("$REPO/jobs/gpu_bind.sh"); fi
}

# ---- steps, and SIGTERM -------------------------------------------------------------------
# A step runs in the background and the shell waits for it, so that a SIGTERM sent to the batch
# shell (sbatch --signal=B:TERM@N, scancel --full, or a kill of a local run) is handled at
# once: it is relayed to the ranks, which finish their current iteration. Relaying through srun
# would not work: srun answers SIGTERM by SIGKILLing its tasks, so under srun the relay asks
# slurmd instead (scancel --signal=TERM signals every step of the job, not the batch shell).
# The handler returns 0 on every path: a bare `return` in a trap handler returns the status of
# the command the trap interrupted (1 inside `if ! scontrol requeue`, 143 from an interrupted
# `wait`), and under `set -e` that status ends the script from inside the handler; bash < 5.3
# then also logs "pop_var_context: head of shell_variables not a function context".
STEP_PID=
HPCINV_GOT_TERM=0
_hpcinv_on_term() {
    HPCINV_GOT_TERM=1
    echo "$JOB_NAME: $(date -Is) batch shell got SIGTERM; asking the ranks to stop" >&2 || :
    if [[ -z "$STEP_PID" ]]; then return 0; fi
    if [[ "${LAUNCH[0]##*/}" == srun ]] && under_slurm && command -v scancel >/dev/null; then
        scancel --signal=TERM "$SLURM_JOB_ID" || kill -TERM "$STEP_PID" 2>/dev/null || true
    else
        kill -TERM "$STEP_PID" 2>/dev/null || true
    fi
    return 0
}
trap _hpcinv_on_term TERM

# run_step CMD...: "${LAUNCH[@]}" CMD..., waited for; returns the launcher's exit status.
run_step() {
    local rc
    echo "+ ${LAUNCH[*]} $*" >&2
    "${LAUNCH[@]}" "$@" &
    STEP_PID=$!
    while :; do
        rc=0
        wait "$STEP_PID" || rc=$?
        # wait returns > 128 when a trapped signal interrupts it; the step may still run.
        if [[ $rc -gt 128 ]] && kill -0 "$STEP_PID" 2>/dev/null; then continue; fi
        break
    done
    STEP_PID=
    return "$rc"
}

# file_stamp FILE: its modification time (nanoseconds), or "none"; written_since STAMP FILE:
# whether FILE was (re)written after file_stamp gave STAMP. A step counts as done by the files
# it wrote, not by the launcher's exit status: Debian's mpiexec.mpich exits 0 after forwarding
# SIGTERM although the ranks exit 3, and some launchers report 0 when ranks were killed.
file_stamp() { stat -c %y "$1" 2>/dev/null || echo none; }
written_since() { [[ -e "$2" && "$(file_stamp "$2")" != "$1" ]]; }

job_banner() {
    local requeued=
    if [[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]]; then requeued=" (requeued ${SLURM_RESTART_COUNT}x)"; fi
    echo "$JOB_NAME: job ${SLURM_JOB_ID:-local}$requeued on $(hostname), $(date -Is)"
    echo "launcher: ${LAUNCH[*]}"
    echo "mpi env:  ${HPCINV_MPI_ENV:-none}; HPCINV_CUDA_AWARE=${HPCINV_CUDA_AWARE:-detect};" \
         "backend ${HPCINV_BACKEND:-config/auto}"
    echo "caches:   HPCINV_CACHE_DIR=${HPCINV_CACHE_DIR:-~/.cache/hpcinv}" \
         "CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-~/.cupy/kernel_cache}"
}

# ---- scaling studies (weak_scaling.sbatch, strong_scaling.sbatch) --------------------------
# run_scaling KIND SIZE_FLAG GPU_SIZES HOST_SIZES [benchmark options...]
# Runs benchmarks/KIND_scaling.py once per rank count, appending JSON lines to
# $HPCINV_OUTPUT/KIND.jsonl (default runs/scaling/), then draws $HPCINV_OUTPUT/KIND.png.
#   Under SLURM: one step per node count of HPCINV_NODES (default: the job's node count), with
#     the job's tasks per node; one job per node count is what jobs/submit_scaling.sh submits,
#     a single large job with HPCINV_NODES="1 2 4 8" runs them all in one allocation. The 1-node
#     step is preceded by a 1-rank step (the baseline of efficiency and speed-up;
#     HPCINV_SINGLE_RANK=0 leaves it out).
#   With HPCINV_LAUNCHER: one run, or one per rank count of HPCINV_RANKS when the launcher
#     contains {n} (HPCINV_LAUNCHER="mpiexec -n {n}" HPCINV_RANKS="1 2 4").
run_scaling() {
    local kind=$1 flag=$2 gpu_sizes=$3 host_sizes=$4
    shift 4
    local outdir=${HPCINV_OUTPUT:-runs/scaling}
    local jsonl=$outdir/$kind.jsonl png=$outdir/$kind.png
    local sizes=$gpu_sizes backend=${HPCINV_BACKEND:-auto}
    local tag=() plot_args=()
    if [[ -n "${HPCINV_TAG:-}" ]]; then tag=(--tag "$HPCINV_TAG"); fi
    if [[ -n "${HPCINV_PLOT_ARGS:-}" ]]; then read -r -a plot_args <<< "$HPCINV_PLOT_ARGS"; fi
    if [[ "$backend" == host ]]; then sizes=$host_sizes; fi
    mkdir -p "$outdir"

    local steps=() k
    if [[ -n "${HPCINV_LAUNCHER:-}" ]]; then
        if [[ "$HPCINV_LAUNCHER" == *"{n}"* ]]; then
            for k in ${HPCINV_RANKS:-1 2}; do steps+=("$k:"); done
        else
            steps=(":")
        fi
    elif under_slurm; then
        local nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
        local tpn=${SLURM_NTASKS_PER_NODE:-$(( ${SLURM_NTASKS:-$nodes} / nodes ))}
        tpn=${tpn%%(*}
        for k in ${HPCINV_NODES:-$nodes}; do
            if [[ "$k" -gt "$nodes" ]]; then
                echo "$JOB_NAME: skipping $k nodes (the job has $nodes)" >&2
                continue
            fi
            # The plot's baseline is the 1-rank record: the 1-node step runs 1 rank first.
            if [[ "$k" == 1 && "$tpn" -gt 1 && "${HPCINV_SINGLE_RANK:-1}" != 0 ]]; then
                steps+=("1:1")
            fi
            steps+=("$(( k * tpn )):$k")
        done
    else
        hpcinv_launcher   # prints the "not inside a SLURM job" error and exits
    fi

    if [[ ${#steps[@]} -eq 0 ]]; then
        echo "$JOB_NAME: no rank count to run (HPCINV_NODES='${HPCINV_NODES:-}')" >&2
        return 2
    fi
    local step rc=0 status=0 lines
    local ntasks nnodes last=${steps[${#steps[@]}-1]}
    # Environment report on the largest step's ranks: MPI library, CUDA-awareness, GPU per rank.
    local info=$outdir/info-${SLURM_JOB_ID:-local}.txt
    hpcinv_launcher "${last%%:*}" "${last#*:}"
    job_banner
    echo "results:  $jsonl"
    run_step "$PYTHON" -m hpcinv info --backend "$backend" > "$info" || status=$?
    cat "$info"
    for step in "${steps[@]}"; do
        ntasks=${step%%:*} nnodes=${step#*:}
        hpcinv_launcher "$ntasks" "$nnodes"
        echo "---- $kind scaling: ${ntasks:-all} rank(s)${nnodes:+ on $nnodes node(s)}"
        rc=0
        lines=$( (cat "$jsonl" 2>/dev/null || true) | wc -l)
        run_step "$PYTHON" "$REPO/benchmarks/${kind}_scaling.py" "$flag" "$sizes" \
            --overlap both --backend "$backend" --out "$jsonl" ${tag[@]+"${tag[@]}"} \
            "$@" ${EXTRA[@]+"${EXTRA[@]}"} || rc=$?
        # A step that wrote no JSON line failed, whatever the launcher says.
        if [[ $rc -eq 0 && $( (cat "$jsonl" 2>/dev/null || true) | wc -l) -le $lines ]]; then
            echo "$JOB_NAME: the launcher returned 0 but no record was added to $jsonl" >&2
            rc=1
        fi
        # A step of N ranks whose records say another MPI size: N copies of a 1-rank MPI
        # (srun without the PMI the MPI needs), not one N-rank run.
        if [[ $rc -eq 0 && -n "$ntasks" ]] && tail -n +"$((lines + 1))" "$jsonl" \
                | grep -v -q "\"ranks\": $ntasks[,}]"; then
            echo "$JOB_NAME: records of this step have an MPI size other than its $ntasks" \
                 "rank(s) (separate 1-rank copies?): choose srun's PMI with SLURM_MPI_TYPE" \
                 "(jobs/README.md)" >&2
            rc=1
        fi
        if [[ $rc -ne 0 ]]; then
            echo "$JOB_NAME: step failed with status $rc" >&2
            status=$rc
        fi
        if [[ $HPCINV_GOT_TERM == 1 ]]; then echo "$JOB_NAME: stopping (SIGTERM)" >&2; break; fi
    done

    # Plot everything in the file so far (serial, on the batch node).
    if [[ -f "$REPO/benchmarks/plot_scaling.py" && -s "$jsonl" ]]; then
        local plot=("$PYTHON" "$REPO/benchmarks/plot_scaling.py" "$jsonl" -o "$png"
                    ${tag[@]+"${tag[@]}"} ${plot_args[@]+"${plot_args[@]}"})
        echo "+ ${plot[*]}" >&2
        if "${plot[@]}"; then
            echo "plot:     $png"
        else
            echo "$JOB_NAME: plot_scaling.py failed (the JSON lines are in $jsonl)" >&2
            if [[ $status -eq 0 ]]; then status=1; fi
        fi
    fi
    return "$status"
}
