"""Issue 20, item 3: ``inversion.memory``, the budget that chooses the warm starts.

The chooser on synthetic budgets (plenty: today's defaults; tight: smaller subspaces, the
adjoint one kept longest; only the base fields: plain warm starts, and below them no warm
starts; below everything one line), the user's sizes winning, the config key's values, and
real runs: a run whose budget fits only the base fields completes, its header says what was
chosen and why, and a restart re-uses the recorded choice (bitwise) whatever the budget then.
"""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinv import config as config_mod
from hpcinv.app import memory_budget as mb
from hpcinv.app.cli import main
from hpcinv.app.resolve import resolved
from hpcinv.errors import ConfigError
from hpcinv.config.schema import memory_budget

import inversion_cases

SHAPE = (63, 31)


def _cfg(**inversion):
    data = {"grid": {"nx": SHAPE[0], "ny": SHAPE[1]},
            "inversion": {"iterations": 3, **inversion}}
    return resolved(config_mod.from_dict(data))


def _need(cfg, am, fm, ws=True):
    return mb.need_bytes(mb.with_sizes(cfg, am, fm, ws), SHAPE, 1, False)


def _sizes(choice):
    return choice.adjoint_memory, choice.forward_memory, choice.warm_start


def test_the_config_key_takes_sizes_fractions_auto_and_off():
    assert memory_budget(None) == memory_budget("auto") == ("auto", None)
    assert memory_budget("off") == ("off", None)
    assert memory_budget(0.8) == ("fraction", 0.8)
    assert memory_budget("30GB") == ("bytes", 30 * 10**9)
    assert memory_budget("512MiB") == ("bytes", 512 * 2**20)
    assert memory_budget(123456) == ("bytes", 123456)
    for bad in (1.5, 0, -2, "lots", "30 parsecs"):
        with pytest.raises(ConfigError, match="inversion.memory must be"):
            memory_budget(bad)
    with pytest.raises(ConfigError, match="inversion.memory must be"):
        config_mod.from_dict({"inversion": {"memory": "much"}})
    assert config_mod.from_dict({"inversion": {"memory": "2GB"}}).inversion.memory == "2GB"


def test_plenty_keeps_todays_defaults():
    cfg = _cfg()
    i = cfg.inversion
    assert (i.adjoint_memory, i.forward_memory) == mb.defaults(cfg) == (6, 3)
    choice = mb.choose(cfg, SHAPE, 1, False, 10**12, "test")
    assert _sizes(choice) == (6, 3, True) and choice.need == _need(cfg, 6, 3)


def test_tight_budgets_give_up_the_forward_subspace_first_then_the_adjoint_one():
    cfg = _cfg()
    steps = mb.ladder(cfg)
    assert steps[:4] == [(6, 3, True), (6, 2, True), (6, 1, True), (6, 0, True)]
    assert steps[4:] == [(a, 0, True) for a in range(5, 0, -1)] + [(0, 0, False)]
    needs = [_need(cfg, *s) for s in steps]
    assert needs == sorted(needs, reverse=True) and len(set(needs)) == len(needs)
    for k, s in enumerate(steps):          # a budget just below a step's need gives the next
        assert _sizes(mb.choose(cfg, SHAPE, 1, False, needs[k], "t")) == s
        if k + 1 < len(steps):
            assert _sizes(mb.choose(cfg, SHAPE, 1, False, needs[k] - 1, "t")) == steps[k + 1]


def test_below_the_base_fields_is_one_line():
    cfg = _cfg()
    base = _need(cfg, 0, 0, False)
    with pytest.raises(ConfigError) as e:
        mb.choose(cfg, SHAPE, 1, False, base - 1, "inversion.memory = '1MB'")
    assert "\n" not in str(e.value) and "63x31 grid needs" in str(e.value)


def test_the_users_sizes_win():
    cfg = _cfg(adjoint_memory=4)                       # set: only the forward subspace shrinks
    assert mb.ladder(cfg) == [(4, 3, True), (4, 2, True), (4, 1, True), (4, 0, True)]
    choice = mb.choose(cfg, SHAPE, 1, False, _need(cfg, 0, 0, False), "tiny")
    assert _sizes(choice) == (4, 0, True) and "do NOT fit the budget" in choice.reason


def _run(tmp_path, name, *args, **inversion):
    path = inversion_cases.small_config(tmp_path, **{"iterations": 3, "checkpoint_every": 2,
                                                     **inversion})
    out = tmp_path / name
    return main(["invert", str(path), "-o", str(out), "--json", *map(str, args)]), out


def _header(capsys):
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "start":
            return json.loads(line)["message"]
    raise AssertionError("no start event")


def _final(out):
    with h5py.File(out / "model_final.h5") as f:
        return f["logK"][...]


def test_a_run_at_the_edge_completes_with_plain_warm_starts_and_says_why(tmp_path, capsys):
    cfg = _cfg()
    base = _need(cfg, 0, 0, True)                      # the base fields and the two copies
    assert _need(cfg, 1, 0, True) == base              # an adjoint subspace of one: that copy
    code, out = _run(tmp_path, "edge", memory=base)
    assert code == 0
    head = _header(capsys)
    assert "memory budget: adjoint_memory 1, forward_memory 0 (inversion.memory = " in head
    assert "the largest warm starts that fit" in head
    assert (out / "model_final.h5").exists()


def test_a_restart_reuses_the_recorded_choice(tmp_path, capsys):
    cfg = _cfg()
    budget = _need(cfg, 2, 0)                          # adjoint 2, no forward subspace
    code, ref = _run(tmp_path, "ref", memory=budget)
    assert code == 0 and "adjoint_memory 2, forward_memory 0" in _header(capsys)
    code, stopped = _run(tmp_path, "stopped", memory=budget, iterations=2)
    assert code == 0 and "adjoint_memory 2, forward_memory 0" in _header(capsys)
    toml = stopped / "config.toml"                     # another budget: plenty ("auto")
    toml.write_text(toml.read_text().replace(f"memory = {budget}", 'memory = "auto"'))
    assert 'memory = "auto"' in toml.read_text()
    assert main(["invert", "--restart", str(stopped), "--iterations", "3", "--json"]) == 0
    head = _header(capsys)
    assert "adjoint_memory 2, forward_memory 0 (recorded in the checkpoint, re-used)" in head
    assert np.array_equal(_final(stopped), _final(ref))
