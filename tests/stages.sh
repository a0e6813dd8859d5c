# Shared by tests/run_all.sh and tests/run_slow.sh (sourced, not run): the interpreter, the MPI
# launcher, the OpenMP wait policy and the stage banner; the working directory is the repository.
#   PYTHON=python3.12         interpreter (default: python)
#   MPIEXEC="srun"            launcher (default: the mpiexec next to python, else on PATH)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python}
if [[ -z "${MPIEXEC:-}" ]]; then
    bindir=$("$PYTHON" -c 'import sys, os; print(os.path.dirname(sys.executable))')
    if [[ -x "$bindir/mpiexec" ]]; then MPIEXEC="$bindir/mpiexec"; else MPIEXEC=mpiexec; fi
fi
# Ranks may outnumber cores (4 ranks on a 2-core CI runner): idle OpenMP threads should sleep,
# not spin. (The host backend already gives each rank cores / ranks-per-node threads.)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

stage() { printf '\n===== %s =====\n' "$*"; }

# The stream checker's serial part (tests/run_slow.sh): the inversion tests under
# HPCINV_STREAM_CHECK=1 (GD, L-BFGS, warm starts, adaptive tolerances, SIGKILL/SIGTERM restarts
# on 1-3 ranks through mpiexec; the full demo and the 4-rank comparison run in the slow stage)
CHECK_SERIAL="tests/test_inversion.py tests/test_streams.py tests/test_state.py
 tests/test_adaptive.py tests/test_misfit_error.py tests/test_forward_prediction.py
 tests/test_forward_warm.py tests/test_gradient_accuracy.py"
CHECK_K="not workshop_demo and not identical_on_1_and_4 and not exact_quality"
