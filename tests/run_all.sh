#!/usr/bin/env bash
# The README's test command: the serial suite without the slow tests, the MPI tests on 2, 3 and
# 4 ranks, and the MPI tests of the exchange, solver, gradient, misfit-error, regularisation and
# autodiff layers again under the stream checker on 2 and 4 ranks. tests/run_slow.sh runs the
# rest (the tests of conftest.SLOW, and the inversion tests under the stream checker); CI runs
# both. Stops at the first failing stage. Usage (from anywhere): bash tests/run_all.sh [ARGS]
#   HPCINV_TEST_RANKS="2 4"   rank counts of the MPI stages (default "2 3 4")
#   HPCINV_CHECK_RANKS="2 3"  rank counts of the stream-checker stage (default "2 4"; "" skips)
#   PYTHON, MPIEXEC           see tests/stages.sh
# The stream checker (HPCINV_STREAM_CHECK=1) is the host backend with CUDA's stream semantics,
# checked (docs/architecture.md); the suite passes under it (HPCINV_STREAM_CHECK=1 bash
# tests/run_all.sh; same for run_slow.sh) but for the tests that compare the memory counter
# with exact byte counts or the host-memory budget (test_memory_count.py,
# test_memory_budget.py): the checker keeps arrays alive in its access records and its arrays
# count as device memory.
# The CuPy backend's own code on the CPU stand-in of tests/cupy_standin (issue 19) needs no stage
# of its own: tests/test_cupy_standin.py installs it itself (serial stage; its mpi-marked tests
# in the 2/3/4-rank stages), and tests/test_cupy_standin_cli.py runs the CLI under it
# (tests/cupy_standin/run_hpcinv.py) on 1-3 ranks through mpiexec (the slow stage).
set -euo pipefail

# shellcheck source=tests/stages.sh
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"
RANKS=${HPCINV_TEST_RANKS:-"2 3 4"}
t_all=$SECONDS

stage "serial: $PYTHON -m pytest -q -m 'not slow' tests $*"
t=$SECONDS
"$PYTHON" -m pytest -q -m "not slow" tests "$@"
echo "serial stage passed in $((SECONDS - t)) s"

for n in $RANKS; do
    stage "MPI, $n ranks: $MPIEXEC -n $n $PYTHON -m pytest -q --with-mpi -m mpi tests $*"
    t=$SECONDS
    # pytest exits 5 when nothing is selected: an MPI stage without MPI tests is a failure too.
    $MPIEXEC -n "$n" "$PYTHON" -m pytest -q --with-mpi -m mpi tests "$@"
    echo "MPI stage ($n ranks) passed in $((SECONDS - t)) s"
done

CHECK_RANKS=${HPCINV_CHECK_RANKS-"2 4"}
CHECK_MPI="tests/test_halo.py tests/test_invariance.py tests/test_gradient.py
 tests/test_regularisation.py tests/test_autodiff_torch.py tests/test_autodiff_jax.py
 tests/test_streams.py tests/test_misfit_error.py tests/test_forward_prediction.py
 tests/test_forward_warm.py"
if [[ -n "$CHECK_RANKS" ]]; then
    for n in $CHECK_RANKS; do
        stage "stream checker, $n ranks: HPCINV_STREAM_CHECK=1 $MPIEXEC -n $n ... -m mpi"
        t=$SECONDS
        # shellcheck disable=SC2086
        HPCINV_STREAM_CHECK=1 $MPIEXEC -n "$n" "$PYTHON" -m pytest -q --with-mpi -m mpi \
            $CHECK_MPI "$@"
        echo "stream checker ($n ranks) passed in $((SECONDS - t)) s"
    done
fi

stage "all tests passed in $((SECONDS - t_all)) s (the slow ones: bash tests/run_slow.sh)"
