"""A run killed with SIGKILL in the middle of a checkpoint write resumes bit-identically.

``hvi fit`` runs in a subprocess whose checkpoint writer is patched (by a
small driver script, not by any hook in hvi) to write part of one file of the
step-4 checkpoint and then SIGKILL its own process: the torn file is the
tensor file's temporary (``tensors``), the kept ``checkpoint-<step>.json``
(``history``) or ``checkpoint.json``'s temporary (``meta``). ``hvi fit
--resume`` must then continue from the previous good checkpoint (step 2, or
step 4 itself where all of its files were complete) and end with the same
parameter values, bit for bit, as a run that was never interrupted, and leave
no temporary file behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from hvi.cli.main import cli
from hvi.checkpoint import META_FILE
from hvi.run_dir import CHECKPOINT_DIR, METRICS_FILE, MODEL_DIR

ARGS = [
    "fit", "--model", "mlp", "--steps", "6", "--task-batch", "2", "--inner-steps", "1", "--checkpoint-every", "2",
    "--val-every", "3", "--no-progress",
]
KILL_STEP = 4

DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys, tempfile

    import safetensors.torch as st

    import hvi.checkpoint as ck

    STAGE, KILL = os.environ["KILL_STAGE"], int(os.environ["KILL_STEP"])


    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


    save_file = st.save_file


    def torn_save_file(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        if STAGE == "tensors" and int((metadata or {}).get("step", -1)) == KILL:
            data = open(filename, "rb").read()
            with open(filename, "wb") as f:  # the temporary file holds half of the tensors
                f.write(data[: len(data) // 2])
            die()


    atomic = ck._atomic_write_bytes


    def torn_atomic(path, data):
        name = "checkpoint.json" if STAGE == "meta" else f"checkpoint-{KILL:08d}.json"
        if STAGE in ("meta", "history") and path.name == name and json.loads(data)["step"] == KILL:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.write(fd, data[: len(data) // 3])
            die()
        return atomic(path, data)


    st.save_file = torn_save_file
    ck._atomic_write_bytes = torn_atomic

    from hvi.cli.main import main

    sys.argv = ["hvi", *sys.argv[1:]]
    main()
    """
)


def _params(run: Path) -> dict[str, torch.Tensor]:
    meta = json.loads((run / MODEL_DIR / META_FILE).read_text())
    tensors = load_file(str(run / MODEL_DIR / meta["tensors"]["file"]))
    return {k: v for k, v in tensors.items() if k.startswith("param/")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    threads = torch.get_num_threads()
    res = CliRunner().invoke(cli, [*ARGS, "--out", str(out)], catch_exceptions=False)
    torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return _params(out)


@pytest.mark.parametrize(
    "stage, resumed_from",
    [
        ("tensors", 2),
        pytest.param("history", 2, marks=pytest.mark.slow),
        ("meta", 2),
    ],
)
def test_sigkill_during_a_checkpoint_write_resumes_bit_identical(tmp_path, fresh_store, uninterrupted, stage,
                                                                 resumed_from):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "runs" / "run"
    env = {**os.environ, "KILL_STAGE": stage, "KILL_STEP": str(KILL_STEP), "OMP_NUM_THREADS": "1"}
    env.pop("HVI_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, str(driver), *ARGS, "--out", str(out)], env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    # The killed run: no run directory, one interrupted RUN.tmp-* holding the torn temporary file.
    assert not out.exists()
    (work,) = (tmp_path / "runs").glob("run.tmp-*")
    torn = [p.name for p in (work / CHECKPOINT_DIR).iterdir() if p.name.endswith(".tmp")]
    assert len(torn) == 1, torn
    assert json.loads((work / CHECKPOINT_DIR / META_FILE).read_text())["step"] == resumed_from

    res = CliRunner().invoke(cli, [*ARGS, "--out", str(out), "--resume"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "Warning" not in res.stderr  # the previous checkpoint is intact: no fallback was needed
    assert f"trained 6 steps ({6 - resumed_from} now)" in res.stdout
    resumed = _params(out)
    assert resumed.keys() == uninterrupted.keys()
    for k in resumed:
        assert torch.equal(resumed[k], uninterrupted[k]), k
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    steps = [json.loads(line)["step"] for line in (out / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
