"""xarray picks the netCDF engine of a user file (netCDF-3 through scipy); write_prediction's class labels are 'label'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

import hvi.data.files as files
from cli_checks import assert_error
from hvi.cli.main import cli
from hvi.data.files import FileSource, read_support_query, write_prediction


def _dataset(seed=0, tasks=10, samples=6):
    g = np.random.default_rng(seed)
    x = g.uniform(-2, 2, size=(tasks, samples, 1)).astype("float32")
    return xr.Dataset({"x": (("task", "sample", "f"), x), "y": (("task", "sample", "f"), np.sin(x))})


@pytest.mark.parametrize("fmt", ["NETCDF3_64BIT", "NETCDF3_CLASSIC"])
def test_a_netcdf3_file_is_read_through_scipy(tmp_path, fmt):
    ds = _dataset()
    path = tmp_path / "tasks3.nc"
    ds.to_netcdf(path, engine="scipy", format=fmt)
    assert path.read_bytes()[:3] == b"CDF"
    src = FileSource(path, k_shot=2)
    batch = src.get_tasks("train", torch.arange(src.num_tasks("train")))
    assert src.x_shape == (1,) and src.y_shape == (1,)
    assert sum(src.num_tasks(s) for s in ("train", "val", "test")) == 10
    assert batch.support_x.shape[1:] == (2, 1) and batch.query_x.shape[1:] == (4, 1)
    # the values are the file's, whichever engine read them
    ds.to_netcdf(tmp_path / "tasks4.nc", engine="h5netcdf")
    same = FileSource(tmp_path / "tasks4.nc", k_shot=2)
    first = torch.arange(3)
    assert torch.equal(same.get_tasks("train", first).support_y, src.get_tasks("train", first).support_y)
    s = read_support_query(path, path)
    assert torch.equal(s.support_x, torch.from_numpy(ds["x"].values))


def test_a_netcdf3_file_without_scipy_names_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "tasks3.nc"
    _dataset().to_netcdf(path, engine="scipy")
    monkeypatch.setattr(files, "_scipy_available", lambda: False)
    with pytest.raises(ValueError) as e:
        FileSource(path, k_shot=2)
    assert str(e.value) == (
        f"{path} is a netCDF-3 file, which xarray reads with scipy; pip install scipy "
        "(or convert it to netCDF-4: nccopy -k nc4 tasks3.nc new.nc)."
    )
    runs = tmp_path / "runs"
    runs.mkdir()
    res = CliRunner().invoke(cli, ["fit", "--model", "mlp", "--data", str(path), "--data-arg", "k_shot=2",
                                   "--out", str(runs / "r")], catch_exceptions=False)
    assert_error(res, "is a netCDF-3 file", "pip install scipy")
    assert list(runs.iterdir()) == []


def test_an_unreadable_file_is_one_line(tmp_path):
    path = tmp_path / "junk.nc"
    path.write_bytes(b"CDF\x01" + bytes(range(200)))
    with pytest.raises(ValueError, match=r"^cannot read .*junk.nc as netCDF \(.*\); pass a netCDF file") as e:
        FileSource(path, k_shot=2)
    assert "\n" not in str(e.value)


def test_write_prediction_writes_class_labels_as_label(tmp_path):
    probs = torch.softmax(torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0)), -1)
    out = write_prediction(tmp_path / "cls.nc", probs.argmax(-1), probs=probs)
    ds = xr.load_dataset(out)
    assert sorted(ds.data_vars) == ["label", "probs"]
    assert ds["label"].dtype == np.int64 and ds["label"].dims == ("task", "sample")
    assert np.array_equal(ds["label"].values, probs.argmax(-1).numpy())
    assert ds["label"].attrs["long_name"] == "most probable class"
    assert np.allclose(ds["probs"].values.sum(-1), 1.0)
    labels_only = xr.load_dataset(write_prediction(tmp_path / "l.nc", probs.argmax(-1)))
    assert sorted(labels_only.data_vars) == ["label"]
    reg = xr.load_dataset(write_prediction(tmp_path / "r.nc", torch.zeros(4, 5, 1), torch.ones(4, 5, 1)))
    assert sorted(reg.data_vars) == ["mean", "std"] and reg["mean"].attrs["long_name"] == "predictive mean"
    with pytest.raises(ValueError, match="^std was given with class labels"):
        write_prediction(tmp_path / "bad.nc", probs.argmax(-1), torch.ones(4, 5), probs=probs)
    with pytest.raises(ValueError, match="^mean holds float32 values but probs were given"):
        write_prediction(tmp_path / "bad.nc", probs.argmax(-1).float(), probs=probs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls.nc", "l.nc", "r.nc"]
