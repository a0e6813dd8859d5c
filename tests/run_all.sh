#!/usr/bin/env bash
# Run every hpcinv test: the serial suite, then the MPI tests on 2, 3 and 4 ranks.
# Stops at the first failing stage. Usage (from anywhere): bash tests/run_all.sh [PYTEST ARGS]
#   HPCINV_TEST_RANKS="2 4"   rank counts of the MPI stages (default "2 3 4")
#   MPIEXEC="srun"            launcher (default: the mpiexec next to python, else on PATH)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python}
RANKS=${HPCINV_TEST_RANKS:-"2 3 4"}
if [[ -z "${MPIEXEC:-}" ]]; then
    bindir=$("$PYTHON" -c 'import sys, os; print(os.path.dirname(sys.executable))')
    if [[ -x "$bindir/mpiexec" ]]; then MPIEXEC="$bindir/mpiexec"; else MPIEXEC=mpiexec; fi
fi
# Ranks may outnumber cores (4 ranks on a 2-core CI runner): idle OpenMP threads should sleep,
# not spin. (The host backend already gives each rank cores / ranks-per-node threads.)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

stage() { printf '\n===== %s =====\n' "$*"; }
t_all=$SECONDS

stage "serial: $PYTHON -m pytest -q tests $*"
t=$SECONDS
"$PYTHON" -m pytest -q tests "$@"
echo "serial stage passed in $((SECONDS - t)) s"

for n in $RANKS; do
    stage "MPI, $n ranks: $MPIEXEC -n $n $PYTHON -m pytest -q --with-mpi -m mpi tests $*"
    t=$SECONDS
    # pytest exits 5 when nothing is selected: an MPI stage without MPI tests is a failure too.
    $MPIEXEC -n "$n" "$PYTHON" -m pytest -q --with-mpi -m mpi tests "$@"
    echo "MPI stage ($n ranks) passed in $((SECONDS - t)) s"
done

stage "all tests passed in $((SECONDS - t_all)) s"
