#!/usr/bin/env bash
# The tests that must stay slow, in a stage of their own (CI runs it after tests/run_all.sh):
# the tests of conftest.SLOW (whole inversions on several ranks, SIGKILL/SIGTERM restarts, the
# full demo, the CLI under the CuPy stand-in), then the inversion tests again under the stream
# checker (GD, L-BFGS, warm starts, adaptive tolerances, restarts on 1-3 ranks through mpiexec).
# Stops at the first failing stage. Usage (from anywhere): bash tests/run_slow.sh [PYTEST ARGS]
#   HPCINV_CHECK_RANKS=""     skip the stream-checker stage (as for tests/run_all.sh)
#   PYTHON, MPIEXEC           see tests/stages.sh
set -euo pipefail

# shellcheck source=tests/stages.sh
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"
t_all=$SECONDS

stage "slow tests: $PYTHON -m pytest -q -m slow tests $*"
t=$SECONDS
"$PYTHON" -m pytest -q -m slow tests "$@"
echo "slow stage passed in $((SECONDS - t)) s"

if [[ -n "${HPCINV_CHECK_RANKS-x}" ]]; then
    stage "stream checker, serial: HPCINV_STREAM_CHECK=1 $PYTHON -m pytest -q $CHECK_SERIAL"
    t=$SECONDS
    # shellcheck disable=SC2086
    HPCINV_STREAM_CHECK=1 "$PYTHON" -m pytest -q $CHECK_SERIAL -k "$CHECK_K" "$@"
    echo "stream checker (serial) passed in $((SECONDS - t)) s"
fi

stage "slow tests passed in $((SECONDS - t_all)) s"
