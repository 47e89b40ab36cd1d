"""hvi.run_dir: the run directory's layout and the reading and writing of its files."""

from __future__ import annotations

import json
import math
import os

import pyro
import pytest
import torch

from hvi import run_dir as rd
from hvi.checkpoint import META_FILE, read_metadata, save_checkpoint


def test_the_layout_is_the_documented_one():
    # The names are an on-disk format that docs/cli.md, the README and older runs rely on.
    assert (rd.CONFIG_FILE, rd.METRICS_FILE, rd.CHECKPOINT_DIR, rd.MODEL_DIR, rd.EVALUATION_FILE) == (
        "config.json", "metrics.jsonl", "checkpoint", "model", "evaluation.json"
    )


def _checkpoint(run, step, keep=1):
    with pyro.get_param_store().scope():
        pyro.param("w", torch.full((2,), float(step)))
        save_checkpoint(rd.checkpoint_dir(run), step=step, keep=keep, rng=False, extra={"x_shape": [step]})


def test_find_resumable_takes_the_newest_interrupted_run_and_falls_back_to_the_kept_history(tmp_path):
    out = tmp_path / "run"
    assert rd.find_resumable(out) == (None, None) and rd.find_resumable(tmp_path / "no" / "run") == (None, None)
    old, new, empty = rd.new_work_dir(out), rd.new_work_dir(out), rd.new_work_dir(out)
    assert {old.name[:8], new.name[:8], empty.name[:8]} == {"run.tmp-"}
    assert oct(os.stat(new).st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode
    _checkpoint(old, 2)
    for step in (3, 4):
        _checkpoint(new, step, keep=2)
    os.utime(rd.checkpoint_dir(old) / META_FILE, (1, 1))  # older
    assert rd.find_resumable(out) == (new, 4) and rd.has_checkpoint(new) and not rd.has_checkpoint(empty)
    (rd.checkpoint_dir(new) / META_FILE).write_text("{torn")  # the newest metadata damaged: its kept copy
    assert rd.checkpoint_step(new) == 4
    (rd.checkpoint_dir(new) / "checkpoint-00000004.json").write_text("[]")  # that too: the kept step 3
    assert rd.checkpoint_step(new) == 3 and rd.saved_info(new) == {"x_shape": [3]}
    assert read_metadata(rd.checkpoint_dir(empty)) is None and rd.saved_info(empty) is None
    with pytest.raises(ValueError, match=r"run .*run is not complete: an interrupted run is at .*run\.tmp-.* \(step 3\)"):
        rd.read_config(out)


def test_finalize_replaces_an_older_run(tmp_path):
    out = tmp_path / "run"
    for n in (1, 2):
        work = rd.new_work_dir(out)
        rd.write_config(work, {"n": n})
        rd.finalize(work, out)
    assert json.loads((out / rd.CONFIG_FILE).read_text()) == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_metrics_append_truncate_and_read(tmp_path):
    assert rd.read_metrics(tmp_path) is None
    for step in (1, 2, 3):
        rd.append_metrics(tmp_path, {"step": step, "loss": math.nan if step == 2 else float(step)})
    with open(tmp_path / rd.METRICS_FILE, "a") as f:
        f.write('{"step": 4, "lo')  # a killed run's torn last line
    rd.truncate_metrics(tmp_path, 2)
    assert rd.read_metrics(tmp_path) == {1: {"step": 1, "loss": 1.0}, 2: {"step": 2, "loss": None}}
    (tmp_path / rd.METRICS_FILE).write_text('{"step": 1}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl has a line that is not a metrics record"):
        rd.read_metrics(tmp_path)


def test_evaluation_is_strict_json_and_removable(tmp_path):
    path = rd.write_evaluation(tmp_path, {"rmse": math.inf, "n": 3})
    assert path == tmp_path.resolve() / "evaluation.json"
    assert path.read_text() == '{\n  "rmse": null,\n  "n": 3\n}\n'
    rd.remove_evaluation(tmp_path)
    rd.remove_evaluation(tmp_path)  # idempotent
    assert not path.exists()
