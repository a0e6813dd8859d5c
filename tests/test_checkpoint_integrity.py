"""Issue 13: checked writes and verified checkpoints of an inversion.

Disk full during a checkpoint (a per-file size limit, RLIMIT_FSIZE, makes the kernel refuse the
write exactly as a full disk does), byte flips and truncation of ``checkpoint.h5`` (fall back to
``checkpoint.prev.h5``, or one line and exit 4), a write that silently loses data, a torn or
missing ``history.jsonl``, and a restart against an edited config. Every restart that succeeds
must end bitwise identical to the uninterrupted run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.app.cli import main
import inversion_cases
from hpcinv.errors import OutputIOError
from hpcinv.app.fingerprint import config_fingerprint
from hpcinv.io import checkpoint as ckpt
from hpcinv.parallel import Decomposition

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}


def small_config(tmp_path, **inversion):
    return inversion_cases.small_config(tmp_path, **{"iterations": 3, "checkpoint_every": 2,
                                                     **inversion})


# The size limit is set after MPI_Init (MPI's own shared-memory files must not hit it), then
# the CLI runs as usual; SIGXFSZ ignored: the write fails with EFBIG, as with ENOSPC.
LIMITED = """import resource, signal, sys
from mpi4py import MPI
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
n = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
from hpcinv.app.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_cli(*args, limit_bytes=None):
    cmd = [sys.executable, "-m", "hpcinv"] if not limit_bytes else \
        [sys.executable, "-c", LIMITED, str(limit_bytes)]
    return subprocess.run(cmd + [str(a) for a in args], env=ENV, capture_output=True,
                          text=True, timeout=600)


def history(run):
    return [json.loads(s) for s in (Path(run) / "history.jsonl").read_text().splitlines()]


def strip(h):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in h]


def final(run):
    with h5py.File(Path(run) / "model_final.h5") as f:
        return f["logK"][...]


def one_line_error(p, code):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    errors = [s for s in p.stderr.splitlines() if s.startswith("hpcinv: error:")]
    assert len(errors) == 1, p.stderr
    return errors[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 5-iteration run every restart must reproduce bitwise."""
    tmp = tmp_path_factory.mktemp("ref")
    run = tmp / "ref"
    assert main(["invert", str(small_config(tmp, iterations=5)), "-q", "-o", str(run)]) == 0
    return strip(history(run)), final(run)


@pytest.fixture
def stopped_run(tmp_path):
    """A 3-iteration run: checkpoint.prev.h5 at iteration 2, checkpoint.h5 at iteration 3."""
    run = tmp_path / "run"
    assert main(["invert", str(small_config(tmp_path)), "-q", "-o", str(run)]) == 0
    with h5py.File(run / ckpt.CHECKPOINT) as f:
        assert f.attrs["iteration"] == 3
    with h5py.File(run / ckpt.PREVIOUS) as f:
        assert f.attrs["iteration"] == 2
    return run


def assert_matches(run, reference):
    h, logK = reference
    assert strip(history(run)) == h
    assert np.array_equal(final(run), logK)


def flip_dataset_byte(path, name, index=5):
    with h5py.File(path) as f:
        off = f[name].id.get_offset()
        assert off is not None, "contiguous dataset expected"
    with open(path, "r+b") as fh:
        fh.seek(off + index)
        b = fh.read(1)
        fh.seek(off + index)
        fh.write(bytes([b[0] ^ 0x40]))


# --- disk full ----------------------------------------------------------------------------

def test_disk_full_during_checkpoint_fails_cleanly_and_restart_matches(stopped_run, reference):
    run = stopped_run
    size = (run / ckpt.CHECKPOINT).stat().st_size
    before = (run / ckpt.CHECKPOINT).read_bytes()
    p = run_cli("invert", "--restart", run, "-q", "--iterations", 5, limit_bytes=size // 2)
    line = one_line_error(p, 4)
    assert "checkpoint" in line and "--restart" in line and "iteration 3" in line, line
    assert (run / ckpt.CHECKPOINT).read_bytes() == before          # previous kept, verified
    ckpt.verify(run / ckpt.CHECKPOINT, MPI.COMM_SELF)
    assert not list(run.glob("checkpoint-*"))                      # no half generation left
    assert not (run / ".hpcinv.lock").exists()                     # lock released
    p = run_cli("invert", "--restart", run, "-q", "--iterations", 5)   # space freed
    assert p.returncode == 0, p.stderr
    assert_matches(run, reference)


def test_silently_lost_data_is_caught_before_publishing(tmp_path, monkeypatch):
    """A write that reports success but loses the data (what a swallowed close error leaves)
    fails the read-back check: OutputIOError, and the previous checkpoint stays."""
    d = Decomposition((9, 5), comm=MPI.COMM_SELF)
    a = np.zeros(d.padded_shape)
    a[d.owned()] = np.arange(45.0).reshape(9, 5)
    ckpt.save(tmp_path, d, {"optimiser.x": a}, None, {"iteration": 1, "scalars": "{}"})
    before = (tmp_path / ckpt.CHECKPOINT).read_bytes()
    monkeypatch.setattr(h5py.Dataset, "__setitem__", lambda self, k, v: None)
    with pytest.raises(OutputIOError, match="reads back different.*iteration 1"):
        ckpt.save(tmp_path, d, {"optimiser.x": a + 1}, None, {"iteration": 2, "scalars": "{}"})
    monkeypatch.undo()
    assert (tmp_path / ckpt.CHECKPOINT).read_bytes() == before
    assert not list(tmp_path.glob("checkpoint-*"))
    assert ckpt.verify(tmp_path / ckpt.CHECKPOINT, MPI.COMM_SELF)["iteration"] == 1


# --- corruption ---------------------------------------------------------------------------

def test_flipped_byte_in_data_falls_back_to_previous(stopped_run, reference):
    run = stopped_run
    flip_dataset_byte(run / ckpt.CHECKPOINT, "optimiser.x")
    p = run_cli("invert", "--restart", run, "-q", "--iterations", 5)
    assert p.returncode == 0, p.stderr
    assert "optimiser.x" in p.stderr and "SHA-256" in p.stderr and ckpt.PREVIOUS in p.stderr
    assert (run / ckpt.DAMAGED).exists()
    assert_matches(run, reference)


def test_flipped_byte_in_optimiser_scalars_is_detected(stopped_run, reference):
    run = stopped_run
    data = bytearray((run / ckpt.CHECKPOINT).read_bytes())
    at = data.find(b'"gamma": ') + len(b'"gamma": ')
    assert at > 20 and chr(data[at]).isdigit()
    data[at] = ord("7") if data[at] != ord("7") else ord("3")    # still valid JSON
    (run / ckpt.CHECKPOINT).write_bytes(bytes(data))
    p = run_cli("invert", "--restart", run, "-q", "--iterations", 5)
    assert p.returncode == 0, p.stderr
    assert "scalar state" in p.stderr and ckpt.PREVIOUS in p.stderr
    assert_matches(run, reference)


def test_truncated_checkpoint_falls_back_then_fails_with_one_line(stopped_run, reference,
                                                                  tmp_path):
    run = stopped_run
    keep = tmp_path / "prev_copy.h5"
    keep.write_bytes((run / ckpt.PREVIOUS).read_bytes())
    cur = run / ckpt.CHECKPOINT
    cur.write_bytes(cur.read_bytes()[: cur.stat().st_size // 2])
    # both damaged: one line, exit 4, nothing changed
    prev = run / ckpt.PREVIOUS
    prev.write_bytes(prev.read_bytes()[:1000])
    p = run_cli("invert", "--restart", run, "-q", "--iterations", 5)
    line = one_line_error(p, 4)
    assert "no usable checkpoint" in line and "truncated" in line, line
    # the previous one intact again: fall back to it
    prev.write_bytes(keep.read_bytes())
    p = run_cli("invert", "--restart", run, "-q", "--iterations", 5)
    assert p.returncode == 0, p.stderr
    assert "truncated" in p.stderr and ckpt.PREVIOUS in p.stderr
    assert_matches(run, reference)


# --- history.jsonl ------------------------------------------------------------------------

def test_torn_history_line_is_dropped_with_a_notice(stopped_run, reference):
    run = stopped_run
    with open(run / "history.jsonl", "a") as f:
        f.write('{"iteration": 4, "misfit": 0.12')                  # killed mid-write
    p = run_cli("invert", "--restart", run, "-q", "--iterations", 5)
    assert p.returncode == 0, p.stderr
    assert "torn" in p.stderr
    assert_matches(run, reference)


def test_missing_history_is_rebuilt_from_the_checkpoint(stopped_run, reference):
    run = stopped_run
    (run / "history.jsonl").unlink()
    p = run_cli("invert", "--restart", run, "-q", "--iterations", 5)
    assert p.returncode == 0, p.stderr
    assert "missing" in p.stderr and "rebuilt" in p.stderr
    assert_matches(run, reference)


# --- config fingerprint -------------------------------------------------------------------

def test_restart_with_an_edited_config_lists_the_differences(stopped_run):
    run = stopped_run
    text = (run / "config.toml").read_text()
    assert "dgamma = 0.2" in text and "smoothing_steps = 49" in text
    (run / "config.toml").write_text(text.replace("dgamma = 0.2", "dgamma = 0.3")
                                     .replace("smoothing_steps = 49", "smoothing_steps = 20"))
    before = (run / ckpt.CHECKPOINT).read_bytes()
    p = run_cli("invert", "--restart", run, "-q")
    line = one_line_error(p, 2)
    assert "inversion.dgamma (0.2 -> 0.3)" in line and "regularisation.smoothing_steps" in line
    assert "inversion.iterations" in line                       # says what may change
    assert (run / ckpt.CHECKPOINT).read_bytes() == before
    # what may change does not trip it: iterations, checkpoint_every, maxiter
    (run / "config.toml").write_text(text.replace("checkpoint_every = 2", "checkpoint_every = 1"))
    p = run_cli("invert", "--restart", run, "-q", "--iterations", 4, "--maxiter", 200000)
    assert p.returncode == 0, p.stderr


def test_observation_file_content_is_in_the_fingerprint(tmp_path):
    from hpcinv import config as config_mod
    obs = tmp_path / "obs.csv"
    obs.write_text("x,y,value\n0.1,0.5,1.0\n")
    cfg = config_mod.Config()
    cfg.observations.points, cfg.observations.file = "file", str(obs)
    a = config_fingerprint(cfg, MPI.COMM_SELF)
    cfg.inversion.iterations, cfg.parallel.backend, cfg.output.dir = 99, "host", "elsewhere"
    assert config_fingerprint(cfg, MPI.COMM_SELF) == a
    obs.write_text("x,y,value\n0.1,0.5,2.0\n")
    b = config_fingerprint(cfg, MPI.COMM_SELF)
    assert b != a
    assert ckpt.config_differences(a[1], b[1])[0].startswith("observations.file")


@pytest.mark.parametrize("levels", [False, True])
def test_the_final_checkpoint_is_written_once(tmp_path, levels):
    """Issue 22: with ``iterations`` a multiple of ``checkpoint_every`` the last checkpoint was
    written twice, so checkpoint.prev.h5 held the same iteration as checkpoint.h5 and the
    fallback protected nothing; a restart at the final iteration rewrote it again."""
    extra = {"levels": [2, 1], "level_iterations": [1, 1]} if levels else {"iterations": 2}
    cfg = small_config(tmp_path, checkpoint_every=1, **extra)
    run = tmp_path / "run"

    def iterations():
        out = []
        for name in (ckpt.CHECKPOINT, ckpt.PREVIOUS):
            with h5py.File(run / name) as f:
                out.append(int(f.attrs["iteration"]))
        return out

    assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
    last = history(run)[-1]["iteration"]
    assert iterations() == [last, last - 1]
    assert main(["invert", "--restart", str(run), "-q"]) == 0
    assert iterations() == [last, last - 1]
