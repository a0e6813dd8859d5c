# shellcheck shell=bash
# The command that continues a run in a new job with the options of this one (sourced by
# invert.sbatch after jobs/common.sh; never run).
#
# A job script's #SBATCH lines are only defaults: `sbatch --nodes=8 --time=12:00:00
# jobs/invert.sbatch` overrides them on the command line, and a continuation that dropped those
# options would run on the script's defaults (2 nodes, 4 GPUs per node, 2 hours). The options
# are read back from `scontrol show job $SLURM_JOB_ID` (formats of Slurm 20.11 to 24.x: TRES
# per node as gpu:4, gres:gpu:4 or gres/gpu:4), else from the SLURM_* variables of the job;
# what neither gives is named, so the user adds it.
#
#   continuation_command DIR SCRIPT ARGS...   prints HPCINV_OUTPUT=DIR [VAR=value ...] sbatch
#       OPTIONS SCRIPT ARGS (shell-quoted) and, on a second line, what could not be recovered.

# Options that change what a continuation asks for; named when they cannot be recovered.
_HPCINV_RESUBMIT_NEEDED=(--nodes --ntasks-per-node --cpus-per-task --gpus-per-node --time)
# Environment settings of the job scripts a new shell would not have.
_HPCINV_RESUBMIT_ENV=(HPCINV_ARGS HPCINV_BACKEND HPCINV_MPI_ENV HPCINV_VENV
                      HPCINV_PYTHON HPCINV_LAUNCHER HPCINV_MAX_REQUEUES HPCINV_CUDA_AWARE)

# _hpcinv_gpu_tres OPTION VALUE: from a TRES list (gpu:4, gres:gpu:a100:4, gres/gpu:4,
# gres/gpu=4, several comma-separated), add OPTION=[type:]N for the GPUs to RESUBMIT_OPTS and
# any other generic resource to RESUBMIT_GRES; sets RESUBMIT_GPU_SEEN=1 when a GPU was there.
_hpcinv_gpu_tres() {
    local option=$1 item name
    local -a items
    IFS=, read -r -a items <<< "$2"
    for item in ${items[@]+"${items[@]}"}; do
        item=${item#gres:}
        item=${item#gres/}
        item=${item/=/:}
        name=${item%%:*}
        if [[ "$name" == gpu ]]; then
            RESUBMIT_OPTS+=("$option=${item#gpu:}")
            RESUBMIT_GPU_SEEN=1
        elif [[ "$option" == --gpus-per-node && -n "$name" && "$item" == *:* ]]; then
            RESUBMIT_GRES+=("$item")
        fi
    done
}

# _hpcinv_job_fields: the KEY=VALUE words of `scontrol show job` for this job into the
# associative array JOB_FIELD (first occurrence of a key wins); returns 1 when there are none.
_hpcinv_job_fields() {
    local text word
    local -a words
    under_slurm && command -v scontrol >/dev/null 2>&1 || return 1
    text=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null) || return 1
    while read -r -a words; do              # read -a: no pathname expansion of "0:0:*:*"
        for word in ${words[@]+"${words[@]}"}; do
            if [[ "$word" == ?*=* && -z "${JOB_FIELD[${word%%=*}]+x}" ]]; then
                JOB_FIELD[${word%%=*}]=${word#*=}
            fi
        done
    done <<< "$text"
    [[ ${#JOB_FIELD[@]} -gt 0 ]]
}

# _hpcinv_field_opt KEY OPTION: OPTION=value from JOB_FIELD[KEY] unless it is empty or one of
# Slurm's "not set" words.
_hpcinv_field_opt() {
    local v=${JOB_FIELD[$1]:-}
    case $v in
        ''|'(null)'|N/A|None|NONE|UNLIMITED|Partition_Limit|'*') return 0 ;;
    esac
    RESUBMIT_OPTS+=("$2=$v")
}

# resubmit_options: RESUBMIT_OPTS (sbatch options of this job) and RESUBMIT_MISSING (the
# options of _HPCINV_RESUBMIT_NEEDED that neither scontrol nor the environment gave).
resubmit_options() {
    RESUBMIT_OPTS=() RESUBMIT_GRES=() RESUBMIT_MISSING=() RESUBMIT_GPU_SEEN=0
    unset JOB_FIELD
    declare -g -A JOB_FIELD=()
    local opt tpn
    if _hpcinv_job_fields; then
        _hpcinv_field_opt JobName --job-name
        _hpcinv_field_opt NumNodes --nodes
        _hpcinv_field_opt NumTasks --ntasks
        tpn=${JOB_FIELD[NtasksPerN:B:S:C]:-}
        tpn=${tpn%%:*}
        if [[ "$tpn" =~ ^[1-9][0-9]*$ ]]; then RESUBMIT_OPTS+=(--ntasks-per-node="$tpn"); fi
        _hpcinv_field_opt CPUs/Task --cpus-per-task
        _hpcinv_gpu_tres --gpus-per-node "${JOB_FIELD[TresPerNode]:-${JOB_FIELD[Gres]:-}}"
        _hpcinv_gpu_tres --gpus "${JOB_FIELD[TresPerJob]:-}"
        _hpcinv_gpu_tres --gpus-per-task "${JOB_FIELD[TresPerTask]:-}"
        _hpcinv_gpu_tres --gpus-per-socket "${JOB_FIELD[TresPerSocket]:-}"
        if [[ $RESUBMIT_GPU_SEEN == 0 && -n "${JOB_FIELD[TRES]:-}" \
              && "${JOB_FIELD[TRES]}" != *gpu* ]]; then
            RESUBMIT_OPTS+=(--gpus-per-node=0)     # the job has none; the script asks for 4
        fi
        if [[ ${#RESUBMIT_GRES[@]} -gt 0 ]]; then
            RESUBMIT_OPTS+=("--gres=$(IFS=,; echo "${RESUBMIT_GRES[*]}")")
        fi
        _hpcinv_field_opt Partition --partition
        _hpcinv_field_opt Account --account
        _hpcinv_field_opt QOS --qos
        _hpcinv_field_opt Reservation --reservation
        _hpcinv_field_opt TimeLimit --time
        _hpcinv_field_opt Features --constraint
        _hpcinv_field_opt Licenses --licenses
        if [[ "${JOB_FIELD[MinMemoryNode]:-0}" != 0 ]]; then
            _hpcinv_field_opt MinMemoryNode --mem
        fi
        _hpcinv_field_opt MinMemoryCPU --mem-per-cpu
    elif under_slurm; then
        # The job's environment: no time limit, constraint or reservation there.
        tpn=${SLURM_NTASKS_PER_NODE:-}
        tpn=${tpn%%(*}
        RESUBMIT_OPTS+=(${SLURM_JOB_NUM_NODES:+--nodes="$SLURM_JOB_NUM_NODES"}
                        ${SLURM_NTASKS:+--ntasks="$SLURM_NTASKS"}
                        ${tpn:+--ntasks-per-node="$tpn"}
                        ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"}
                        ${SLURM_GPUS_PER_NODE:+--gpus-per-node="$SLURM_GPUS_PER_NODE"}
                        ${SLURM_JOB_PARTITION:+--partition="$SLURM_JOB_PARTITION"}
                        ${SLURM_JOB_ACCOUNT:+--account="$SLURM_JOB_ACCOUNT"}
                        ${SLURM_JOB_QOS:+--qos="$SLURM_JOB_QOS"})
        RESUBMIT_MISSING=(--constraint --reservation)
    fi
    for opt in "${_HPCINV_RESUBMIT_NEEDED[@]}"; do
        if [[ $opt == --gpus-per-node && $RESUBMIT_GPU_SEEN == 1 ]]; then continue; fi
        if [[ " ${RESUBMIT_OPTS[*]-} " != *" $opt="* ]]; then RESUBMIT_MISSING+=("$opt"); fi
    done
}

continuation_command() {
    local dir=$1 script=$2 var arg words=()
    shift 2
    resubmit_options
    words=("HPCINV_OUTPUT=$(printf %q "$(realpath -m "$dir" 2>/dev/null || echo "$dir")")")
    for var in "${_HPCINV_RESUBMIT_ENV[@]}"; do
        if [[ -n "${!var:-}" ]]; then words+=("$var=$(printf %q "${!var}")"); fi
    done
    words+=(sbatch)
    for arg in ${RESUBMIT_OPTS[@]+"${RESUBMIT_OPTS[@]}"} "$script" "$@"; do
        words+=("$(printf %q "$arg")")
    done
    echo "${words[*]}"
    if [[ ${#RESUBMIT_MISSING[@]} -gt 0 ]]; then
        echo "(not recovered from scontrol show job or the job's environment:" \
             "${RESUBMIT_MISSING[*]}; add yours, or the script's #SBATCH defaults apply)"
    fi
}
