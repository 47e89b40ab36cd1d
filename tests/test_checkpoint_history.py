"""Kept checkpoints: the newest N stay, a damaged newest one falls back with a warning, NaN steps never write."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from click.testing import CliRunner

from hvi.checkpoint import META_FILE, load_checkpoint, read_checkpoint, save_checkpoint
from hvi.cli.main import cli
from hvi.run_dir import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, MODEL_DIR


@pytest.fixture(autouse=True)
def _fresh_store(fresh_store):
    """Every test here starts from an empty param store (tests/conftest.py)."""


def _save(path, step, keep):
    pyro.clear_param_store()
    pyro.param("w", torch.full((3,), float(step)))
    return save_checkpoint(path, step=step, keep=keep, rng=False)


def _truncate(path):
    meta = json.loads((path / META_FILE).read_text())
    t = path / meta["tensors"]["file"]
    t.write_bytes(t.read_bytes()[:40])


def test_keeps_the_newest_n(tmp_path):
    for step in range(1, 5):
        _save(tmp_path, step, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[:3] == ["checkpoint-00000003.json", "checkpoint-00000004.json", "checkpoint.json"]
    assert len(names) == 5 and all(n.startswith("tensors-0000000") for n in names[3:])
    assert sorted(n[8:16] for n in names[3:]) == ["00000003", "00000004"]
    _save(tmp_path, 5, keep=1)  # keep=1: only checkpoint.json and its tensors
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "checkpoint.json"
    assert len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError, match="keep=0 must be an int >= 1."):
        save_checkpoint(tmp_path, step=6, keep=0)


def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, keep=3)
    _truncate(tmp_path)
    with pytest.warns(UserWarning, match=r"^checkpoint .* is corrupted: sha256 of tensors-00000003-\w+\.safetensors "
                      r"is .* Falling back to the newest good checkpoint, step 2 \(checkpoint-00000002.json\)\.$"):
        ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 2 and torch.equal(pyro.param("w").detach(), torch.full((3,), 2.0))
    (tmp_path / META_FILE).write_text("{trunc")  # the metadata itself damaged
    with pytest.warns(UserWarning, match=r"checkpoint.json is not valid JSON .*step 2"):
        assert read_checkpoint(tmp_path).step == 2


def test_without_a_good_one_the_newest_error_is_raised(tmp_path):
    _save(tmp_path, 1, keep=1)
    _truncate(tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint .* is corrupted: sha256 of tensors-00000001-"):
        read_checkpoint(tmp_path)


TINY = ["--model", "mlp", "--task-batch", "2", "--inner-steps", "1", "--no-progress", "--checkpoint-every", "1"]


def _invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False, prog_name="hvi")


def _params(run):
    ckpt = read_checkpoint(run / MODEL_DIR)
    return {k: v for k, v in ckpt.params.items()}


def test_resume_after_a_damaged_checkpoint_is_still_bit_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _invoke(["fit", *TINY, "--steps", "5", "--out", str(a)]).exit_code == 0
    assert _invoke(["fit", *TINY, "--steps", "4", "--out", str(b)]).exit_code == 0
    kept = sorted(p.name for p in (b / CHECKPOINT_DIR).glob("checkpoint-*.json"))
    assert kept == ["checkpoint-00000003.json", "checkpoint-00000004.json"]  # --keep-checkpoints default 2
    _truncate(b / CHECKPOINT_DIR)
    res = _invoke(["fit", "--out", str(b), "--resume", "--steps", "5", "--no-progress"])
    assert res.exit_code == 0, res.output
    warning = [line for line in res.stderr.splitlines() if line.startswith("Warning: ")]
    assert len(warning) == 1 and warning[0].endswith(
        "Falling back to the newest good checkpoint, step 3 (checkpoint-00000003.json)."
    )
    assert "trained 5 steps (2 now)" in res.stdout
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    la = [json.loads(x)["loss"] for x in (a / METRICS_FILE).read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (b / METRICS_FILE).read_text().splitlines()]
    assert la == lb


def test_keep_checkpoints_option(tmp_path):
    out = tmp_path / "r"
    assert _invoke(["fit", *TINY, "--steps", "4", "--keep-checkpoints", "3", "--out", str(out)]).exit_code == 0
    assert len(list((out / CHECKPOINT_DIR).glob("checkpoint-*.json"))) == 3
    assert json.loads((out / CONFIG_FILE).read_text())["keep_checkpoints"] == 3
    res = _invoke(["fit", *TINY, "--steps", "4", "--keep-checkpoints", "0", "--out", str(tmp_path / "z")])
    assert res.exit_code == 1 and res.stderr == "Error: keep_checkpoints=0 must be an integer >= 1.\n"


def test_a_step_with_a_nan_loss_writes_no_checkpoint(tmp_path, monkeypatch):
    import hvi.svi

    original, calls = hvi.svi.SVI.step, []

    def third_step_not_finite(self, *args, **kwargs):
        calls.append(1)
        loss = original(self, *args, **kwargs)
        return float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(hvi.svi.SVI, "step", third_step_not_finite)
    import hvi.checkpoint

    written, original_save = [], hvi.checkpoint.save_checkpoint

    def recording(path, **kwargs):
        written.append((path.name, kwargs["step"]))
        return original_save(path, **kwargs)

    monkeypatch.setattr(hvi.checkpoint, "save_checkpoint", recording)  # run_fit imports it when it runs
    out = tmp_path / "r"
    res = _invoke(["fit", *TINY, "--steps", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Warning: step 3: the loss is nan (step skipped); checkpoint not written, the last one is step 2.\n" \
        in res.stderr
    assert written == [("checkpoint", 1), ("checkpoint", 2), ("checkpoint", 4), ("model", 4)]
    assert read_checkpoint(out / CHECKPOINT_DIR).step == 4
