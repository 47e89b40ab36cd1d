"""Tests of user data files: FileSource, write_tasks, read_support_query, write_prediction."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import xarray as xr

from hvi.data.base import SPLITS, get_source
from hvi.data.files import FileSource, read_support_query, write_prediction, write_tasks
from hvi.data.sinusoid import SinusoidSource


def regression_arrays(n_task: int = 10, n_sample: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n_task, n_sample, 2)).astype(np.float32)
    y = (x.sum(-1, keepdims=True) + 0.1 * rng.standard_normal((n_task, n_sample, 1))).astype(
        np.float32
    )
    return {"x": x, "y": y}


def dataset(n_task: int = 10, n_sample: int = 6) -> xr.Dataset:
    a = regression_arrays(n_task, n_sample)
    return xr.Dataset(
        {"x": (("task", "sample", "feature"), a["x"]), "y": (("task", "sample", "target"), a["y"])}
    )


def test_round_trip_taskbatch_with_roles(tmp_path):
    batch = SinusoidSource(k_shot=4, k_query=6).get_tasks("train", torch.arange(20))
    path = write_tasks(tmp_path / "sin.nc", batch)
    assert path.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    src = FileSource(path)
    assert src.likelihood == "gaussian" and src.num_classes is None and src.default_model == "mlp"
    assert (src.k_shot, src.k_query, src.x_shape, src.y_shape) == (4, 6, (1,), (1,))
    assert [src.num_tasks(s) for s in SPLITS] == [16, 2, 2]
    seen = []
    for split in SPLITS:
        pos = src.task_positions(split)
        seen += pos.tolist()
        got = src.get_tasks(split, torch.arange(len(pos)))
        for name in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(got, name), getattr(batch, name)[pos]), name
        assert got.num_tasks == len(pos)
    assert sorted(seen) == list(range(20))  # splits are disjoint and cover the file


def test_k_shot_noise_and_seeded_split(tmp_path):
    a = regression_arrays(50, 8)
    a["noise"] = np.full_like(a["y"], 0.1)
    path = write_tasks(tmp_path / "reg.nc", a)
    src = FileSource(path, k_shot=3, split_fractions=(0.6, 0.2, 0.2), seed=5)
    assert [src.num_tasks(s) for s in SPLITS] == [30, 10, 10]
    batch = src.get_tasks("test", torch.tensor([2, 0]))
    pos = src.task_positions("test")[[2, 0]]
    assert torch.equal(batch.support_x, torch.from_numpy(a["x"])[pos, :3])
    assert torch.equal(batch.query_y, torch.from_numpy(a["y"])[pos, 3:])
    assert torch.equal(batch.support_noise, torch.full((2, 3, 1), 0.1))
    assert batch.query_noise.shape == (2, 5, 1)
    other = FileSource(path, k_shot=3, split_fractions=(0.6, 0.2, 0.2), seed=6)
    assert not torch.equal(other.task_positions("train"), src.task_positions("train"))
    assert torch.equal(
        FileSource(path, k_shot=3, seed=5).task_positions("val"),
        FileSource(path, k_shot=3, seed=5).task_positions("val"),
    )


def test_classification_images_with_split_and_is_support(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((6, 4, 1, 8, 8)).astype(np.float32)
    y = np.tile(np.array([0, 1, 0, 1]), (6, 1))
    is_support = np.tile(np.array([False, True, True, False]), (6, 1))
    split = ["train", "train", "val", "test", "train", "val"]
    path = write_tasks(
        tmp_path / "cls.nc", {"x": x, "y": y, "is_support": is_support}, split=split, num_classes=3
    )
    src = FileSource(path)
    assert src.likelihood == "categorical" and src.num_classes == 3 and src.default_model == "conv4"
    assert src.x_shape == (1, 8, 8) and src.y_shape == ()
    assert src.task_positions("train").tolist() == [0, 1, 4]
    batch = src.get_tasks("val", torch.tensor([1]))
    assert batch.support_y.dtype == torch.int64
    assert torch.equal(batch.support_x[0], torch.from_numpy(x[5, [1, 2]]))
    assert torch.equal(batch.query_y[0], torch.tensor([0, 1]))
    src2 = get_source("file", path=path)
    assert src2.num_tasks("val") == 2


def test_string_role_variable_and_dim_order(tmp_path):
    ds = dataset(6, 5).transpose("sample", "task", ...)
    ds["role"] = (
        ("task", "sample"),
        np.array([["query", "Support", "query", "support", "query"]] * 6),
    )
    ds["split"] = (("task",), np.array([0, 0, 0, 1, 2, 2]))
    ds.to_netcdf(tmp_path / "roles.nc")
    src = FileSource(tmp_path / "roles.nc")
    assert (src.k_shot, src.k_query) == (2, 3)
    batch = src.get_tasks("test", torch.tensor([1]))
    x = torch.from_numpy(ds["x"].transpose("task", "sample", ...).values)
    assert torch.equal(batch.support_x[0], x[5, [1, 3]])
    assert torch.equal(batch.query_x[0], x[5, [0, 2, 4]])


def write(ds: xr.Dataset, tmp_path, name: str = "bad.nc"):
    path = tmp_path / name
    ds.to_netcdf(path)
    return path


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist; check the path"):
        FileSource(tmp_path / "missing.nc", k_shot=2)
    (tmp_path / "garbage.nc").write_bytes(b"this is not netcdf")
    with pytest.raises(ValueError, match="cannot read .*garbage.nc as netCDF"):
        FileSource(tmp_path / "garbage.nc", k_shot=2)
    with pytest.raises(ValueError, match="has no variable 'x'"):
        FileSource(write(dataset().drop_vars("x"), tmp_path, "nox.nc"), k_shot=2)
    with pytest.raises(ValueError, match="has no variable 'y'"):
        FileSource(write(dataset().drop_vars("y"), tmp_path, "noy.nc"), k_shot=2)
    with pytest.raises(
        ValueError,
        match=r"'x' .* has dims \('item', 'sample', 'feature'\); expected \('task', 'sample'",
    ):
        FileSource(write(dataset().rename({"task": "item"}), tmp_path, "dims.nc"), k_shot=2)
    ds = dataset()
    ds["x"][1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="'x' in .* contains 1 NaN/inf values"):
        FileSource(write(ds, tmp_path, "nanx.nc"), k_shot=2)
    ds = dataset()
    ds["y"][0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="'y' in .* contains 1 NaN/inf values"):
        FileSource(write(ds, tmp_path, "infy.nc"), k_shot=2)


def test_bad_support_and_splits(tmp_path):
    good = write(dataset(), tmp_path, "good.nc")
    with pytest.raises(ValueError, match="does not say which samples are support; add a 'role'"):
        FileSource(good)
    with pytest.raises(ValueError, match="k_shot=6 must be between 1 and 5"):
        FileSource(good, k_shot=6)
    with pytest.raises(ValueError, match="1 sample\\(s\\) per task; each task needs >= 2"):
        FileSource(write(dataset(10, 1), tmp_path, "one.nc"), k_shot=1)
    ds = dataset(4, 3)
    roles = np.array([["support", "query", "query"]] * 4)
    roles[2] = "query"
    ds["role"] = (("task", "sample"), roles)
    with pytest.raises(ValueError, match="task 2 of .* has no support samples"):
        FileSource(write(ds, tmp_path, "nosupport.nc"))
    roles[2] = ["support", "support", "query"]
    ds["role"] = (("task", "sample"), roles)
    with pytest.raises(
        ValueError, match="number of support samples varies across tasks .*from 1 to 2"
    ):
        FileSource(write(ds, tmp_path, "varies.nc"))
    ds["role"] = (("task", "sample"), np.array([["support", "supp", "query"]] * 4))
    with pytest.raises(ValueError, match="has values \\['supp'\\]; use 'support' or 'query'"):
        FileSource(write(ds, tmp_path, "badrole.nc"))
    ds["role"] = (("task", "sample"), np.array([["support", "query", "query"]] * 4))
    with pytest.raises(ValueError, match="k_shot=1 was given too; pass k_shot=None"):
        FileSource(write(ds, tmp_path, "both.nc"), k_shot=1)
    ds["split"] = (("task",), np.array(["train", "val", "train", "val"]))
    with pytest.raises(ValueError, match="split 'test' of .* has no tasks"):
        FileSource(write(ds, tmp_path, "nosplit.nc"))
    with pytest.raises(ValueError, match="has 3 tasks and split_fractions=.* leave .val. empty"):
        FileSource(write(dataset(3, 4), tmp_path, "few.nc"), k_shot=2)
    with pytest.raises(
        ValueError, match="split_fractions=.* must be three non-negative numbers summing to 1"
    ):
        FileSource(good, k_shot=2, split_fractions=(0.5, 0.2, 0.2))


def test_bad_noise(tmp_path):
    ds = dataset()
    ds["noise"] = xr.zeros_like(ds["y"])
    with pytest.raises(ValueError, match="'noise' .* must be a positive std"):
        FileSource(write(ds, tmp_path, "zero.nc"), k_shot=2)
    ds["noise"] = (("task", "sample"), np.ones((10, 6), np.float32))
    with pytest.raises(ValueError, match="'noise' .* expected the dims of y"):
        FileSource(write(ds, tmp_path, "dims.nc"), k_shot=2)


@pytest.mark.skipif(importlib.util.find_spec("zarr") is not None, reason="zarr is installed")
def test_zarr_needs_package(tmp_path):
    (tmp_path / "store.zarr").mkdir()
    with pytest.raises(ValueError, match="needs the zarr package; pip install zarr"):
        FileSource(tmp_path / "store.zarr", k_shot=2)


def test_support_query_prediction_round_trip(tmp_path):
    a = regression_arrays(5, 4)
    q = regression_arrays(5, 7, seed=1)
    sp = write_tasks(tmp_path / "support.nc", a)
    qp = write_tasks(tmp_path / "query.nc", (q["x"], q["y"]))
    batch = read_support_query(sp, qp)
    assert batch.support_x.shape == (5, 4, 2) and batch.query_y.shape == (5, 7, 1)
    assert torch.equal(batch.query_y, torch.from_numpy(q["y"]))
    assert torch.equal(batch.task_index, torch.arange(5)) and batch.num_tasks == 5
    xr.Dataset({"x": (("task", "sample", "f"), q["x"])}).to_netcdf(tmp_path / "query_x.nc")
    unknown = read_support_query(sp, tmp_path / "query_x.nc")
    assert unknown.query_y.shape == (5, 7, 1) and torch.isnan(unknown.query_y).all()

    mean, std = torch.randn(5, 7, 1), torch.rand(5, 7, 1)
    out = write_prediction(
        tmp_path / "pred.nc", mean, std, attrs={"model": "mlp", "ok": True, "cfg": {"a": 1}}
    )
    ds = xr.load_dataset(out)
    assert ds["mean"].dims == ("task", "sample", "y_dim_0")
    assert np.array_equal(ds["mean"].values, mean.numpy()) and np.array_equal(
        ds["std"].values, std.numpy()
    )
    assert ds.attrs["model"] == "mlp" and ds.attrs["ok"] == 1 and ds.attrs["cfg"] == '{"a": 1}'
    write_prediction(out, mean + 1, std)  # overwrite in place
    assert np.allclose(xr.load_dataset(out)["mean"].values, mean.numpy() + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pred.nc",
        "query.nc",
        "query_x.nc",
        "support.nc",
    ]

    probs = torch.softmax(torch.randn(5, 7, 3), -1)
    out = write_prediction(tmp_path / "cls.nc", probs.argmax(-1), probs=probs)
    ds = xr.load_dataset(out)
    assert ds["probs"].dims == ("task", "sample", "class") and ds["label"].dtype == np.int64
    assert "mean" not in ds and np.array_equal(ds["label"].values, probs.argmax(-1).numpy())
    with pytest.raises(ValueError, match="directory .* does not exist"):
        write_prediction(tmp_path / "nodir" / "p.nc", mean, std)
    with pytest.raises(ValueError, match="std has shape"):
        write_prediction(tmp_path / "p.nc", mean, std[:, :3])


def test_support_query_mismatch(tmp_path):
    sp = write_tasks(tmp_path / "s.nc", regression_arrays(5, 4))
    qp = write_tasks(tmp_path / "q.nc", regression_arrays(6, 4))
    with pytest.raises(ValueError, match="has 5 tasks but query file .* has 6"):
        read_support_query(sp, qp)
