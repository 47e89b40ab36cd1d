"""Data-parallel meta-training (hvi.distributed): 2 CPU ranks (gloo, loopback) under torchrun.

The ranks' result equals one process training on the same global batches: the
per-task noise is keyed by a task's position in the global batch (inner-loop
streams and the q(φ_i) draw), the global RNG (θ draws) is seeded alike on all
ranks, and gradients are combined with the weights B_r/B. Float64; only the
order of the all-reduce's sums differs, hence the 1e-12 tolerance. The worker is
tests/distributed_worker.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hvi.checkpoint import read_checkpoint
from hvi.distributed import shard_sizes, shard_slice
from hvi.run_dir import CONFIG_FILE, METRICS_FILE, MODEL_DIR

WORKER = Path(__file__).with_name("distributed_worker.py")


def torchrun(out: Path, case: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), str(out), case]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_shards_cover_the_batch_once():
    assert shard_sizes(5, 2) == [3, 2]
    assert [shard_slice(7, r, 3) for r in range(3)] == [slice(0, 3), slice(3, 5), slice(5, 7)]
    with pytest.raises(ValueError, match="task_batch=1 is smaller than the 2 processes"):
        shard_sizes(1, 2)


def test_two_ranks_equal_one_process_and_a_crash_ends_the_job(tmp_path):
    """One torchrun job (one start-up): the three equality cases, a fit with a seed per rank (refused),
    a fit whose step 1 diverges on rank 1 (skipped on both), then rank 1 raises in a last fit."""
    out = tmp_path / "params.pt"
    proc = torchrun(out, "all+crash", timeout=120)
    end = time.time()
    # the crash: the job ends non-zero with the failing rank's error, soon after it
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr, proc.stderr[-3000:]
    crashed = float(Path(f"{out}.crash").read_text())
    assert end - crashed < 60, end - crashed
    for rank in (0, 1):  # seed=rank: each rank refused the fit
        assert "the global RNG differs between the ranks" in Path(f"{out}.seed{rank}").read_text()
        # step 1 diverged on rank 1 only: both ranks skipped it (and stayed in step)
        assert Path(f"{out}.skipped{rank}").read_text() == "[1]"
    saved = torch.load(out, weights_only=True)  # never unpickle arbitrary objects
    assert set(saved) == {"delta", "normal", "maml"}
    for case, both in saved.items():
        dist_p, single = both["distributed"], both["single"]
        assert set(dist_p) == set(single) and single, case
        for name, v in single.items():
            assert v.dtype == torch.float64
            # the 4 steps moved the params (an all-zero update would also "agree"); "parts" are each
            # step's loss and ELBO parts: rank 0 reports those of the global batch
            assert not torch.equal(v, torch.zeros_like(v)), (case, name)
            torch.testing.assert_close(dist_p[name], v, rtol=1e-12, atol=1e-12, msg=f"{case}: {name}")


@pytest.mark.slow  # three torchrun launches of the CLI (one by hvi fit --nproc 2), ~45 s
def test_hvi_fit_under_torchrun_writes_once_and_resumes(tmp_path):
    common = ["--model", "mlp", "--task-batch", "4", "--inner-steps", "1", "--no-progress", "--val-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def fit(*args, nproc_option=False):
        if nproc_option:  # hvi fit --nproc 2 re-runs itself under torchrun
            cmd = [sys.executable, "-m", "hvi.cli.main", "fit", *args, "--nproc", "2"]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "hvi.cli.main", "fit", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    full, part = tmp_path / "full", tmp_path / "part"
    proc = fit(*common, "--steps", "4", "--out", str(full))
    assert proc.stdout.count("run directory:") == 1  # rank 0 reports, rank 1 is quiet
    fit(*common, "--steps", "2", "--out", str(part), nproc_option=True)
    fit("--out", str(part), "--resume", "--steps", "4", "--no-progress")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "part"]  # no stray RUN_DIR.tmp-*
    cfg = json.loads((full / CONFIG_FILE).read_text())
    assert cfg["distributed"] == {"world_size": 2, "task_batch": 4, "task_batch_per_rank": [2, 2]}
    lines = [json.loads(x) for x in (full / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]  # written once, by rank 0
    assert [r["loss"] for r in lines] == [json.loads(x)["loss"] for x in (part / METRICS_FILE).read_text().splitlines()]
    a, b = read_checkpoint(full / MODEL_DIR).params, read_checkpoint(part / MODEL_DIR).params
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("nproc", ["0", str(2**20)])
def test_nproc_out_of_range_is_one_line(nproc, tmp_path):
    from click.testing import CliRunner

    from hvi.cli.main import cli

    res = CliRunner().invoke(cli, ["fit", "--model", "mlp", "--nproc", nproc, "--out", str(tmp_path / "r")])
    assert res.exit_code != 0
    assert f"Error: --nproc {nproc} must be an integer from 1 to the" in res.output
    assert not (tmp_path / "r").exists()


def test_init_reads_torchruns_environment(monkeypatch):
    from hvi.distributed import init

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init() is None  # a plain process: no group
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 must be set to 0..1 with WORLD_SIZE=2"):
        init()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="device cuda:0 would put rank 1 .* on another rank's GPU"):
        init(device="cuda:0")
