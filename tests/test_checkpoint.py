"""Tests for hvi.checkpoint: safetensors + JSON checkpoints, atomic writes, verification."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pyro
import pytest
import torch
from pyro.distributions import constraints
from torch.distributions import biject_to

import hvi.data.sinusoid  # noqa: F401  (registers the source)
from hvi import InnerConfig, MetaModel
from hvi.checkpoint import (
    META_FILE,
    constraint_from_json,
    constraint_to_json,
    expected_params,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from hvi.data.base import get_source
from hvi.models import get_model
from hvi.priors.gaussian import GaussianPrior
from hvi.sites import positive


def _meta(hidden=(8,), learn_lr=False, q_theta="delta", hyperprior=False):
    torch.manual_seed(0)
    return MetaModel(
        get_model("mlp", hidden=hidden),
        GaussianPrior(init_scale=0.1, hyperprior=hyperprior),
        "gaussian",
        q_theta=q_theta,
        inner=InnerConfig(steps=1, lr=1e-3, learn_lr=learn_lr),
    )


def _train(meta, steps=2):
    """Trains ``meta`` in an emptied global store (hvi.fit keeps a caller's params; these tests save the store)."""
    from hvi.fit import fit

    pyro.clear_param_store()
    optim = pyro.optim.Adam({"lr": 1e-2})
    gen = torch.Generator().manual_seed(0)
    src = get_source("sinusoid", num_tasks=(20, 4, 4))
    fit(meta, src, steps=steps, task_batch=2, optimizer=optim, generator=gen, seed=0)
    return optim, gen


def _store_params():
    store = pyro.get_param_store()
    return {k: v.detach().clone() for k, v in store.get_state()["params"].items()}


def test_round_trip_params_optimizer_generator_rng(tmp_path):
    meta = _meta()
    optim, gen = _train(meta)
    before = _store_params()
    cons = dict(pyro.get_param_store().get_state()["constraints"])
    opt_state = optim.get_state()
    gen_state = gen.get_state()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "ck", step=2, optimizer=optim, generator=gen, config={"model": "mlp"}, extra={"a": 1})
    expect_torch, expect_py, expect_np = torch.rand(3), random.random(), np.random.rand()

    pyro.clear_param_store()
    optim2 = pyro.optim.Adam({"lr": 1e-2})
    gen2 = torch.Generator().manual_seed(123)
    torch.manual_seed(99)
    ck = load_checkpoint(tmp_path / "ck", expected=meta, optimizer=optim2, generator=gen2, restore_rng=True)
    assert ck.step == 2 and ck.config == {"model": "mlp"} and ck.extra == {"a": 1}
    assert torch.equal(torch.rand(3), expect_torch)
    assert random.random() == expect_py and np.random.rand() == expect_np
    after = _store_params()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k
        assert pyro.get_param_store().get_state()["params"][k].requires_grad
    assert all(constraint_to_json(cons[k]) == constraint_to_json(c) for k, c in ck.constraints.items())
    assert torch.equal(gen2.get_state(), gen_state)
    # optimizer state is consumed lazily by PyroOptim; compare the stored dicts
    assert optim2._state_waiting_to_be_consumed.keys() == opt_state.keys()
    for name, st in opt_state.items():
        got = optim2._state_waiting_to_be_consumed[name]
        assert got["param_groups"][0]["lr"] == st["param_groups"][0]["lr"]
        for idx, s in st["state"].items():
            for key, v in s.items():
                assert torch.equal(torch.as_tensor(got["state"][idx][key]), torch.as_tensor(v)), (name, key)
    # constrained values match what pyro.param returns
    for k, v in ck.constrained().items():
        assert torch.allclose(v, pyro.param(k).detach())


def _same_state(a, b):
    """The same param and constraint objects under the same names."""
    return all(a[k].keys() == b[k].keys() and all(a[k][n] is b[k][n] for n in a[k]) for k in ("params", "constraints"))


def test_load_keeps_params_of_other_names_in_the_global_store(tmp_path):
    meta = _meta()
    _train(meta)
    saved = _store_params()
    save_checkpoint(tmp_path / "ck", step=2, config={}, extra={})
    pyro.clear_param_store()
    other = pyro.param("user.scale", torch.tensor([0.5, 2.0]), constraint=constraints.positive).detach().clone()
    pyro.param("theta.layers.0.weight.loc", torch.zeros(3))  # a stale param of a checkpoint name
    load_checkpoint(tmp_path / "ck", expected=meta)
    store = pyro.get_param_store()
    assert sorted(store.keys()) == sorted([*saved, "user.scale"])
    assert torch.equal(pyro.param("user.scale").detach(), other)
    assert constraint_to_json(store._constraints["user.scale"]) == {"type": "positive"}
    for k, v in saved.items():
        assert torch.equal(store.get_state()["params"][k].detach(), v), k
    assert len(store._param_to_name) == len(saved) + 1  # the stale tensor was removed, not shadowed


def test_load_into_a_given_store_leaves_the_global_one_alone(tmp_path):
    from pyro.params.param_store import ParamStoreDict

    meta = _meta()
    _train(meta)
    saved = _store_params()
    save_checkpoint(tmp_path / "ck", step=2, config={}, extra={})
    pyro.clear_param_store()
    pyro.param("user.loc", torch.ones(2))
    before = pyro.get_param_store().get_state()
    store = ParamStoreDict()
    load_checkpoint(tmp_path / "ck", expected=meta, param_store=store)
    assert _same_state(pyro.get_param_store().get_state(), before)
    assert sorted(store.keys()) == sorted(saved)
    for k, v in saved.items():
        assert torch.equal(store.get_state()["params"][k].detach(), v), k
    # and back: the given store is what save_checkpoint writes
    save_checkpoint(tmp_path / "again", step=2, config={}, extra={}, param_store=store)
    again = read_checkpoint(tmp_path / "again")
    assert sorted(again.params) == sorted(saved)
    assert all(torch.equal(again.params[k], v) for k, v in saved.items())


def test_a_failed_load_leaves_the_store_alone(tmp_path):
    meta = _meta(hidden=(8,))
    _train(meta)
    save_checkpoint(tmp_path / "ck", step=2, config={}, extra={})
    pyro.clear_param_store()
    pyro.param("user.loc", torch.ones(2))
    before = pyro.get_param_store().get_state()
    with pytest.raises(ValueError, match="of shape \\(8, 1\\) but the model expects \\(16, 1\\)"):
        load_checkpoint(tmp_path / "ck", expected=_meta(hidden=(16,)))
    assert _same_state(pyro.get_param_store().get_state(), before)


def test_expected_params_match_the_guide(tmp_path):
    for kwargs in ({}, {"learn_lr": True}, {"q_theta": "normal", "hyperprior": True}, {"hyperprior": True}):
        pyro.clear_param_store()
        meta = _meta(**kwargs)
        _train(meta, steps=1)
        got = {k: tuple(v.shape) for k, v in pyro.get_param_store().items()}
        assert got == expected_params(meta), kwargs


def test_files_json_and_atomic_replacement(tmp_path):
    meta = _meta()
    optim, gen = _train(meta)
    d = tmp_path / "ck"
    save_checkpoint(d, step=1, optimizer=optim, generator=gen, config={}, extra={})
    save_checkpoint(d, step=2, optimizer=optim, generator=gen, config={}, extra={})
    files = sorted(p.name for p in d.iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) == 1
    assert not [f for f in files if f.endswith(".tmp")]
    meta_json = json.loads((d / META_FILE).read_text())
    assert meta_json["format_version"] == 1 and meta_json["step"] == 2
    assert len(meta_json["tensors"]["sha256"]) == 64
    assert meta_json["params"]["likelihood.noise"]["constraint"] == {"type": "positive"}
    assert meta_json["params"]["theta.layers.0.weight.loc"]["constraint"] == {"type": "real"}


class _Payload:
    """What a malicious checkpoint would hold: unpickling it creates the file ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _pickle_payload(kind: str, marker) -> bytes:
    if kind == "pickle":
        return pickle.dumps({"param/w": _Payload(marker)})
    import io

    buf = io.BytesIO()
    torch.save({"hook": _Payload(marker), "param/w": torch.zeros(3)}, buf)  # a torch.save file (zip + pickle)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("checksum", ["stale", "forged"])
def test_a_pickle_in_place_of_the_tensor_file_is_refused_and_never_runs(tmp_path, kind, checksum):
    import hashlib

    pyro.clear_param_store()
    pyro.param("w", torch.ones(3))
    d = save_checkpoint(tmp_path / "ck", step=1, config={}, extra={})
    marker = tmp_path / "payload-ran"
    payload = _pickle_payload(kind, marker)
    tfile = next(d.glob("*.safetensors"))
    tfile.write_bytes(payload)
    if checksum == "forged":  # the attacker rewrote checkpoint.json too: the checksum passes, the parser refuses
        meta = json.loads((d / META_FILE).read_text())
        meta["tensors"]["sha256"] = hashlib.sha256(payload).hexdigest()
        (d / META_FILE).write_text(json.dumps(meta))
    expected = "corrupted: sha256 of" if checksum == "stale" else "corrupted: cannot read tensors-"
    for read in (read_checkpoint, lambda path: load_checkpoint(path, expected={"w": (3,)})):
        with pytest.raises(ValueError, match=expected) as info:
            read(d)
        assert "\n" not in str(info.value) and str(info.value).startswith(f"checkpoint {d} is corrupted: ")
        assert not marker.exists()
    assert torch.equal(pyro.param("w").detach(), torch.ones(3))  # the store was not touched
    # The payload is live: unpickling it (what an unrestricted torch.load would do) runs it.
    live = tmp_path / "live"
    _unpickle(_pickle_payload(kind, live))
    assert live.exists()


def _unpickle(data: bytes) -> None:
    """Unpickle a pickle, or the pickle inside a torch.save zip, with no restriction (never torch.load)."""
    import io
    import zipfile

    if not zipfile.is_zipfile(io.BytesIO(data)):
        pickle.loads(data)
        return
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))

        class Storage(Exception):
            pass

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid):  # a tensor's storage: reached after the payload ran
                raise Storage

        with pytest.raises(Storage):
            Unpickler(io.BytesIO(z.read(name))).load()


def test_corrupted_checkpoint_fails_checksum(tmp_path):
    meta = _meta()
    _train(meta)
    d = save_checkpoint(tmp_path / "ck", step=2, config={}, extra={})
    tfile = next(d.glob("*.safetensors"))
    raw = bytearray(tfile.read_bytes())
    raw[-5] ^= 0xFF
    tfile.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted: sha256"):
        read_checkpoint(d)
    (d / META_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_checkpoint(d)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing")


def test_shape_mismatch_names_the_param(tmp_path):
    meta = _meta(hidden=(8,))
    _train(meta)
    save_checkpoint(tmp_path / "ck", step=2, config={}, extra={})
    other = _meta(hidden=(16,))
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "ck", expected=other)
    msg = str(err.value)
    assert "checkpoint has param 'theta.layers.0.weight.loc' of shape (8, 1) but the model expects (16, 1)" in msg
    assert "different --model/config" in msg
    with pytest.raises(ValueError, match="which the model expects|does not have"):
        load_checkpoint(tmp_path / "ck", expected=_meta(learn_lr=True))


@pytest.mark.parametrize(
    "c",
    [
        constraints.real,
        constraints.positive,
        constraints.nonnegative,
        constraints.greater_than(-2.5),
        constraints.interval(-1.0, 3.0),
        constraints.unit_interval,
        constraints.simplex,
        constraints.half_open_interval(0.0, 2.0),
        constraints.less_than(4.0),
        constraints.lower_cholesky,
        constraints.independent(constraints.positive, 1),
        positive,
    ],
)
def test_constraint_json_round_trip(c):
    d = constraint_to_json(c)
    json.dumps(d)
    back = constraint_from_json(d)
    assert constraint_to_json(back) == d
    if c is constraints.real or c is constraints.unit_interval:
        assert back is c
    if c is constraints.positive or c is positive:
        # Read back as hvi's exp-only positive: the same support and the same values.
        assert back is positive
        x = torch.linspace(-30.0, 30.0, 13)
        assert torch.equal(biject_to(back)(x), biject_to(constraints.positive)(x))


def test_unknown_constraint_fails_clearly(tmp_path):
    pyro.clear_param_store()
    pyro.param("odd", torch.arange(3.0), constraint=constraints.ordered_vector)
    with pytest.raises(ValueError, match="cannot store a param with constraint"):
        save_checkpoint(tmp_path / "ck", step=0, config={}, extra={})
    assert not (tmp_path / "ck" / META_FILE).exists()
