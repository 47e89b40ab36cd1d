"""Tests of the real solar-irradiance task source (hvi/data/solar.py, hvi/data/solar.nc)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from hvi.data.base import SPLITS, get_source
from hvi.data.solar import (
    SolarSource,
    climatology,
    daylight_mask,
    load_solar,
    period_mean_persistence,
    persistence,
)
from hvi.tasks import TaskBatch

REPO = Path(__file__).resolve().parents[1]
BUILD_PYTHON = os.environ.get("HVI_SOLAR_BUILD_PYTHON", "/tmp/solar-build/bin/python")


@pytest.fixture(scope="module")
def src() -> SolarSource:
    return SolarSource()


def _footprints(src: SolarSource, split: str) -> set[tuple[str, int]]:
    """Every (site, day) a split's tasks touch, context periods included."""
    return {
        (t["site"], d)
        for t in src.task_info(split)
        for d in range(t["first_day"], t["last_day"] + 1)
    }


def test_registered_and_metadata(src):
    s = get_source("solar")
    assert isinstance(s, SolarSource)
    assert s.likelihood == "gaussian" and s.default_model == "bayes_unet"
    assert src.x_shape == (3, 8, 16) and src.y_shape == (1, 8, 16)
    counts = {sp: src.num_tasks(sp) for sp in SPLITS}
    assert counts == {"train": 73, "val": 12, "test": 42}


def test_file_small_and_licensed():
    path = resources.files("hvi.data").joinpath("solar.nc")
    assert path.is_file()
    assert os.path.getsize(str(path)) < 5 * 1024 * 1024
    d = load_solar()
    n = len(d["site"])
    assert n >= 4 and len(set(d["location"])) >= 4
    for key in ("licence", "provenance", "provider", "source_file", "citation", "name", "sampling"):
        assert len(d[key]) == n and all(len(v) > 10 for v in d[key]), key
    assert all("pvlib" in p for p in d["provenance"])
    assert all("0.11.2" in p for p in d["provenance"])
    assert "BSRN" in d["attrs"]["skipped_sources"]
    assert d["ghi"].shape == d["ghi_clearsky"].shape == d["zenith"].shape == (n, 365, 24)
    assert np.isfinite(d["ghi"]).all() and (d["ghi"] >= 0).all()
    assert (d["ghi_clearsky"] >= 0).all() and d["ghi_clearsky"].max() < 1400
    assert (d["zenith"] >= 0).all() and (d["zenith"] <= 180).all()
    # Clear sky is zero at night, positive at high sun.
    assert (d["ghi_clearsky"][d["zenith"] > 100] == 0).all()
    assert (d["ghi_clearsky"][d["zenith"] < 60] > 100).all()
    assert (d["date"] > 1950_00_00).all()


def test_shapes_dtypes_and_value_ranges(src):
    for split in SPLITS:
        m = src.num_tasks(split)
        b = src.get_tasks(split, torch.arange(m))
        assert isinstance(b, TaskBatch)
        assert b.support_x.shape == (m, 5, 3, 8, 16) and b.query_x.shape == (m, 5, 3, 8, 16)
        assert b.support_y.shape == (m, 5, 1, 8, 16) and b.query_y.shape == (m, 5, 1, 8, 16)
        for t in (b.support_x, b.support_y, b.query_x, b.query_y):
            assert t.dtype == torch.float32 and torch.isfinite(t).all()
        assert b.task_index.dtype == torch.int64 and b.num_tasks == m
        x, y, _ = b.joined()
        assert ((x[:, :, :2] >= 0) & (x[:, :, :2] <= 1.5)).all()
        assert ((y >= 0) & (y <= 1.5)).all()
        assert ((x[:, :, 2] >= 0) & (x[:, :, 2] < 1.4)).all()
        # Night targets are 0; most daylight targets are positive.
        day = x[:, :, 2:3] > 0
        assert (y[~day] == 0).all()
        assert (y[day] > 0).float().mean() > 0.99
        assert 0.3 < day.float().mean() < 0.95
        # Consecutive examples chain: x channel 1 of example i+1 is y of example i,
        # channel 0 of example i+2 likewise.
        assert torch.equal(x[:, 1:, 1:2], y[:, :-1])
        assert torch.equal(x[:, 2:, 0:1], y[:, :-2])


def test_determinism_and_sampling(src):
    idx = torch.tensor([3, 0, 7])
    a, b = src.get_tasks("train", idx), SolarSource().get_tasks("train", idx)
    for f in ("support_x", "support_y", "query_x", "query_y", "task_index"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    s1 = src.sample("test", 8, torch.Generator().manual_seed(0))
    s2 = src.sample("test", 8, torch.Generator().manual_seed(0))
    assert torch.equal(s1.query_y, s2.query_y) and torch.equal(s1.task_index, s2.task_index)
    assert s1.task_index.unique().numel() == 8
    assert sum(b.batch_size for b in src.iterate("val", 5)) == src.num_tasks("val")
    with pytest.raises(ValueError, match="out of range"):
        src.get_tasks("val", torch.tensor([src.num_tasks("val")]))
    with pytest.raises(ValueError, match="split"):
        src.num_tasks("dev")


def test_held_out_site_and_disjoint_splits(src):
    info = {sp: src.task_info(sp) for sp in SPLITS}
    assert all(t["location"] != "greensboro_nc" for sp in ("train", "val") for t in info[sp])
    assert any(t["location"] == "greensboro_nc" for t in info["test"])
    # Test also holds out periods of training sites.
    train_sites = {t["site"] for t in info["train"]}
    assert {t["site"] for t in info["test"]} & train_sites
    assert {t["site"] for t in info["val"]} <= train_sites
    fp = {sp: _footprints(src, sp) for sp in SPLITS}
    assert not fp["train"] & fp["val"]
    assert not fp["train"] & fp["test"]
    assert not fp["val"] & fp["test"]
    for sp in SPLITS:
        for t in info[sp]:
            assert 0 <= t["first_day"] < t["last_day"] < 365
            assert t["last_day"] - t["first_day"] + 1 == (2 + 5 + 5) * 8


def test_other_configurations():
    s = SolarSource(k_shot=3, k_query=2, days=4, hours=12, stride=4, test_site="miami_fl")
    b = s.sample("train", 4, torch.Generator().manual_seed(1))
    assert b.support_x.shape == (4, 3, 3, 4, 12) and b.query_y.shape == (4, 2, 1, 4, 12)
    assert all(t["location"] != "miami_fl" for t in s.task_info("train"))
    with pytest.raises(ValueError, match="divisible by 4"):
        SolarSource(days=6)
    with pytest.raises(ValueError, match="no task"):
        SolarSource(k_shot=10, k_query=10)
    with pytest.raises(ValueError, match="test_site"):
        SolarSource(test_site="atlantis")


def test_baselines_on_test_tasks(src):
    b = src.get_tasks("test", torch.arange(src.num_tasks("test")))
    mask = daylight_mask(b)
    assert mask.shape == b.query_y.shape and mask.dtype == torch.bool
    results = {}
    for name, fn in (("persistence", persistence), ("period_mean", period_mean_persistence),
                     ("climatology", climatology)):
        p = fn(b)
        assert p.shape == b.query_y.shape and p.dtype == b.query_y.dtype
        assert torch.isfinite(p).all() and (p[~mask] == 0).all()
        err = (p - b.query_y)[mask]
        results[name] = (err.pow(2).mean().sqrt().item(), err.abs().mean().item())
    assert SolarSource.persistence is persistence or callable(src.persistence)
    print("daylight RMSE / MAE on test tasks:",
          {k: (round(r, 4), round(a, 4)) for k, (r, a) in results.items()})
    # Forecasting several days ahead: all baselines are far from perfect but sane.
    for rmse, mae in results.values():
        assert 0.1 < rmse < 0.6 and 0.05 < mae < rmse


def test_no_pvlib_at_runtime():
    code = "import sys, hvi.data.solar as s; s.SolarSource(); assert 'pvlib' not in sys.modules"
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, cwd=REPO)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(BUILD_PYTHON), reason=f"build venv {BUILD_PYTHON} missing")
def test_build_check_reproduces_shipped_file():
    shipped = str(resources.files("hvi.data").joinpath("solar.nc"))
    r = subprocess.run([BUILD_PYTHON, str(REPO / "scripts" / "build_solar.py"), "--check", shipped],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
