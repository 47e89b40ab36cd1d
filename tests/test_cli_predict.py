"""hvi predict outputs: input dims and coords, CF-style attributes, label/probs, --samples, --quantiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cli_checks import invoke
import torch
import xarray as xr

from hvi.cli.evaluate import mixture_quantiles, parse_quantiles
from hvi.data.files import write_tasks

TINY = ["--model", "mlp", "--steps", "3", "--task-batch", "2", "--inner-steps", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _fresh_store(fresh_store):
    """Every test here starts from an empty param store (tests/conftest.py)."""


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sine"
    res = invoke(["fit", *TINY, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    g = np.random.default_rng(0)
    x = g.normal(size=(12, 8, 2)).astype("float32")
    y = (x[..., 0] > 0).astype("int64") + (x[..., 1] > 1).astype("int64")
    data = write_tasks(d / "cls.nc", {"x": x, "y": y}, split=["train"] * 8 + ["val"] * 2 + ["test"] * 2,
                       num_classes=3)
    out = d / "run"
    res = invoke(["fit", *TINY, "--data", str(data), "--data-arg", "k_shot=4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _files(tmp_path, y_trailing: bool):
    g = np.random.default_rng(1)
    xs = g.uniform(-5, 5, size=(3, 5, 1)).astype("float32")
    ys = np.sin(xs)
    tasks = ["site_a", "site_b", "site_c"]
    if y_trailing:
        y = xr.DataArray(ys, dims=("task", "sample", "channel"), coords={"channel": ["ghi"]})
    else:
        y = xr.DataArray(ys[..., 0], dims=("task", "sample"))
    y.attrs.update(units="W m-2", long_name="irradiance")
    support = xr.Dataset({"x": (("task", "sample", "feature"), xs), "y": y}, coords={"task": tasks})
    support.to_netcdf(tmp_path / "s.nc", engine="h5netcdf")
    xq = g.uniform(-5, 5, size=(3, 7, 1)).astype("float32")
    query = xr.Dataset({"x": (("task", "sample", "feature"), xq)},
                       coords={"task": tasks, "sample": np.arange(100, 107)})
    query.to_netcdf(tmp_path / "q.nc", engine="h5netcdf")
    return tmp_path / "s.nc", tmp_path / "q.nc"


def _predict(run, s, q, out, *extra):
    return invoke(["predict", str(run), "--support", str(s), "--query", str(q), "--out", str(out),
                   "--num-samples", "4", *extra])


def test_regression_keeps_dims_coords_and_units_and_writes_draws_and_quantiles(regression_run, tmp_path):
    s, q = _files(tmp_path, y_trailing=False)
    res = _predict(regression_run, s, q, tmp_path / "p.nc", "--samples", "5", "--quantiles", "0.05,0.5,0.95")
    assert res.exit_code == 0, res.output
    with xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf") as ds:
        assert sorted(ds.data_vars) == ["mean", "quantiles", "samples", "std"]
        assert ds["mean"].dims == ("task", "sample") and ds["std"].dims == ("task", "sample")
        assert list(ds["task"].values) == ["site_a", "site_b", "site_c"]
        assert list(ds["sample"].values) == list(range(100, 107))
        assert ds["mean"].attrs == {"long_name": "predictive mean of irradiance", "units": "W m-2"}
        assert ds["std"].attrs == {"long_name": "predictive standard deviation of irradiance", "units": "W m-2"}
        assert ds["samples"].dims == ("draw", "task", "sample") and ds["samples"].shape == (5, 3, 7)
        assert list(ds["draw"].values) == [0, 1, 2, 3, 4]
        assert ds["quantiles"].dims == ("quantile", "task", "sample")
        assert list(ds["quantile"].values) == [0.05, 0.5, 0.95]
        assert ds["quantiles"].attrs["units"] == "W m-2" and ds["quantile"].attrs["units"] == "1"
        qv = ds["quantiles"].values
        assert (qv[0] < qv[1]).all() and (qv[1] < qv[2]).all()
        assert bool((ds["std"] > 0).all()) and np.isfinite(ds["samples"].values).all()
        assert ds.attrs["model"] == "mlp" and ds.attrs["num_samples"] == 4 and ds.attrs["source"].startswith("hvi ")
        mean, std = ds["mean"].values, ds["std"].values
    # the draws have their own random stream: mean and std are those of a plain run
    assert _predict(regression_run, s, q, tmp_path / "plain.nc").exit_code == 0
    with xr.open_dataset(tmp_path / "plain.nc", engine="h5netcdf") as ds:
        assert sorted(ds.data_vars) == ["mean", "std"]
        np.testing.assert_array_equal(ds["mean"].values, mean)
        np.testing.assert_array_equal(ds["std"].values, std)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nc", "plain.nc", "q.nc", "s.nc"]


def test_y_dims_and_their_coords_are_kept(regression_run, tmp_path):
    s, q = _files(tmp_path, y_trailing=True)
    assert _predict(regression_run, s, q, tmp_path / "p.nc", "--quantiles", "0.5").exit_code == 0
    with xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf") as ds:
        assert ds["mean"].dims == ("task", "sample", "channel") and list(ds["channel"].values) == ["ghi"]
        assert ds["quantiles"].dims == ("quantile", "task", "sample", "channel")


def test_classification_writes_label_and_probs(classification_run, tmp_path):
    g = np.random.default_rng(2)
    xs = g.normal(size=(2, 4, 2)).astype("float32")
    write_tasks(tmp_path / "s.nc", {"x": xs, "y": (xs[..., 0] > 0).astype("int64")}, num_classes=3)
    xr.Dataset({"x": (("task", "sample", "x_dim_0"), g.normal(size=(2, 6, 2)).astype("float32"))}).to_netcdf(
        tmp_path / "q.nc", engine="h5netcdf"
    )
    res = _predict(classification_run, tmp_path / "s.nc", tmp_path / "q.nc", tmp_path / "p.nc", "--samples", "3")
    assert res.exit_code == 0, res.output
    with xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf") as ds:
        assert sorted(ds.data_vars) == ["label", "probs", "samples"]
        assert ds["label"].dims == ("task", "sample") and ds["label"].dtype == np.int64
        assert ds["label"].attrs["long_name"] == "most probable class of y"
        assert ds["probs"].dims == ("task", "sample", "class") and list(ds["class"].values) == [0, 1, 2]
        assert ds["probs"].attrs == {"long_name": "predictive class probabilities of y", "units": "1"}
        np.testing.assert_allclose(ds["probs"].sum("class").values, 1, rtol=1e-5)
        np.testing.assert_array_equal(ds["label"].values, ds["probs"].argmax("class").values)
        assert ds["samples"].dims == ("draw", "task", "sample") and ds["samples"].dtype == np.int64
        assert set(np.unique(ds["samples"].values)) <= {0, 1, 2}
    res = _predict(classification_run, tmp_path / "s.nc", tmp_path / "q.nc", tmp_path / "c.nc", "--quantiles", "0.5")
    assert res.exit_code == 1 and res.stderr == (
        "Error: --quantiles needs a regression run; a classification run writes probs (and --samples).\n"
    )
    assert not (tmp_path / "c.nc").exists()


@pytest.mark.parametrize(
    "extra, line",
    [
        (["--quantiles", "0.05,x"], "Error: --quantiles '0.05,x': 'x' is not a number; pass e.g. 0.05,0.5,0.95."),
        (["--quantiles", "0.5,1"], "Error: --quantiles '0.5,1': 1.0 is not in (0, 1); pass e.g. 0.05,0.5,0.95."),
        (["--samples", "0"], "Error: Invalid value for '--samples': 0 is not in the range x>=1. "
                             "(see 'hvi predict --help')"),
    ],
)
def test_bad_samples_or_quantiles_write_nothing(regression_run, tmp_path, extra, line):
    s, q = _files(tmp_path, y_trailing=False)
    res = _predict(regression_run, s, q, tmp_path / "p.nc", *extra)
    assert res.exit_code != 0 and res.stderr == line + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.nc", "s.nc"]


def test_a_failed_write_leaves_no_file(regression_run, tmp_path, monkeypatch):
    s, q = _files(tmp_path, y_trailing=False)

    def broken(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    res = _predict(regression_run, s, q, tmp_path / "p.nc", "--samples", "2")
    assert res.exit_code == 1 and res.stderr == "Error: disk full\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.nc", "s.nc"]


def test_mixture_quantiles_and_parse_quantiles():
    one = mixture_quantiles(torch.zeros(1, 2), torch.tensor([1.0, 2.0]), [0.975, 0.5])
    z = 1.959963984540054
    torch.testing.assert_close(one, torch.tensor([[z, 2 * z], [0.0, 0.0]], dtype=torch.float64), atol=1e-9, rtol=0)
    two = mixture_quantiles(torch.tensor([[-1.0], [1.0]]), torch.tensor([0.5]), [0.5, 0.9])
    assert abs(float(two[0, 0])) < 1e-9
    cdf = sum(0.5 * (1 + math.erf((float(two[1, 0]) - m) / (0.5 * math.sqrt(2)))) for m in (-1, 1)) / 2
    assert abs(cdf - 0.9) < 1e-9
    assert parse_quantiles("0.05, 0.5,0.95") == [0.05, 0.5, 0.95] and parse_quantiles(None) == []
