"""Tests of the procedural and bundled-data task sources (sinusoid, clouds, images, glyphs)."""

from __future__ import annotations

import math

import pytest
import torch

from hvi.data.base import SPLITS, get_source, list_sources
from hvi.data.clouds import CloudSource, persistence
from hvi.data.glyphs import ALPHABET_SPLITS, GlyphSource
from hvi.data.images import PHOTO_SPLITS, FacesSource, ImageTilesSource, pixel_grid
from hvi.data.sinusoid import SinusoidSource
from hvi.tasks import TaskBatch


def assert_same_batch(a: TaskBatch, b: TaskBatch) -> None:
    for name in ("support_x", "support_y", "query_x", "query_y", "task_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.num_tasks == b.num_tasks


def check_layout(batch: TaskBatch, src, b: int, ns: int, nq: int, split: str) -> None:
    assert batch.support_x.shape == (b, ns, *src.x_shape)
    assert batch.query_x.shape == (b, nq, *src.x_shape)
    assert batch.support_y.shape == (b, ns, *src.y_shape)
    assert batch.query_y.shape == (b, nq, *src.y_shape)
    assert batch.support_x.dtype == torch.float32 and batch.query_x.dtype == torch.float32
    ydtype = torch.int64 if src.likelihood == "categorical" else torch.float32
    assert batch.support_y.dtype == ydtype and batch.query_y.dtype == ydtype
    assert batch.task_index.dtype == torch.int64 and batch.task_index.shape == (b,)
    assert batch.num_tasks == src.num_tasks(split)


def test_registry_names():
    assert {"sinusoid", "clouds", "faces", "images", "glyphs"} <= set(list_sources())
    src = get_source("sinusoid", k_shot=3, k_query=4)
    assert isinstance(src, SinusoidSource) and src.k_shot == 3


# --------------------------------------------------------------------------- sinusoid


def test_sinusoid_layout_and_truth():
    src = SinusoidSource()
    assert src.default_model == "mlp" and src.likelihood == "gaussian"
    assert [src.num_tasks(s) for s in SPLITS] == [20000, 1000, 1000]
    idx = torch.tensor([0, 7, 19999])
    batch = src.get_tasks("train", idx)
    check_layout(batch, src, 3, 10, 10, "train")
    assert torch.equal(batch.task_index, idx)
    amp, phase = src.task_params("train", idx)
    x, y, _ = batch.joined()
    assert torch.equal(y, amp[:, None, None] * torch.sin(x - phase[:, None, None]))
    assert x.min() >= -5 and x.max() <= 5


def test_sinusoid_param_ranges_and_disjoint_splits():
    src = SinusoidSource(num_tasks=(2000, 500, 500))
    params = {s: src.task_params(s, torch.arange(src.num_tasks(s))) for s in SPLITS}
    for amp, phase in params.values():
        assert amp.min() >= 0.1 and amp.max() <= 5.0
        assert phase.min() >= 0.0 and phase.max() <= math.pi
    pairs = {s: set(zip(a.tolist(), p.tolist(), strict=True)) for s, (a, p) in params.items()}
    assert len(pairs["train"]) == 2000
    assert not pairs["train"] & pairs["val"] and not pairs["train"] & pairs["test"]
    assert not pairs["val"] & pairs["test"]


def test_sinusoid_determinism_and_seed():
    src = SinusoidSource(k_shot=5, k_query=3)
    idx = torch.tensor([4, 2, 9])
    assert_same_batch(
        src.get_tasks("val", idx), SinusoidSource(k_shot=5, k_query=3).get_tasks("val", idx)
    )
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert_same_batch(src.sample("train", 4, g1), src.sample("train", 4, g2))
    other = SinusoidSource(k_shot=5, k_query=3, seed=1).get_tasks("val", idx)
    assert not torch.equal(other.support_x, src.get_tasks("val", idx).support_x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k_shot": 0}, "k_shot=0 must be an int >= 1"),
        ({"k_query": -1}, "k_query=-1 must be an int >= 0"),
        ({"num_tasks": (10, 5)}, "num_tasks=.* must be three positive ints"),
        ({"seed": -2}, r"^seed=-2 must be an int >= 0; pass e.g. seed=0\.$"),
    ],
)
def test_sinusoid_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SinusoidSource(**kwargs)


def test_sinusoid_bad_index_and_split():
    src = SinusoidSource(num_tasks=(10, 5, 5))
    with pytest.raises(ValueError, match="out of range"):
        src.get_tasks("val", torch.tensor([5]))
    with pytest.raises(ValueError, match="split='dev' must be one of"):
        src.num_tasks("dev")


def test_one_split_check_for_every_source():
    """hvi.data.base.check_split / split_index: the one check (and message) of a split name."""
    from hvi.data.base import check_split, split_index

    assert [split_index(s) for s in SPLITS] == [0, 1, 2] and check_split("val") == "val"
    for bad, call in [
        (1, lambda: check_split(1)),
        ("dev", lambda: split_index("dev")),
        ("dev", lambda: SinusoidSource().num_tasks("dev")),
        ("dev", lambda: CloudSource(size=8).num_tasks("dev")),
        ("dev", lambda: GlyphSource().num_tasks("dev")),
        ("dev", lambda: ImageTilesSource().photos("dev")),
    ]:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == f"split={bad!r} must be one of ('train', 'val', 'test')."


# --------------------------------------------------------------------------- clouds


@pytest.fixture(scope="module")
def clouds():
    return CloudSource()


def test_clouds_layout_values_and_determinism(clouds):
    assert clouds.default_model == "bayes_unet"
    assert clouds.x_shape == (3, 32, 32) and clouds.y_shape == (1, 32, 32)
    assert [clouds.num_tasks(s) for s in SPLITS] == [2000, 200, 200]
    idx = torch.arange(8)
    batch = clouds.get_tasks("train", idx)
    check_layout(batch, clouds, 8, 5, 5, "train")
    x, y, _ = batch.joined()
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert x.min() >= 0.0 and x.max() <= 1.5
    assert_same_batch(batch, clouds.get_tasks("train", idx))


def test_clouds_temporal_structure(clouds):
    batch = clouds.get_tasks("val", torch.arange(16))
    x, y, _ = batch.joined()
    frames = torch.cat([x, y], dim=2).flatten(3)  # (B, N, 4, H*W)
    a, b = frames[:, :, :-1], frames[:, :, 1:]
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-8)
    assert corr.mean() > 0.5
    pred = persistence(batch)
    assert pred.shape == batch.query_y.shape
    assert torch.equal(pred, CloudSource.persistence(batch))
    mse_persist = ((pred - batch.query_y) ** 2).mean()
    mse_mean = ((batch.support_y.mean(dim=(1, 2, 3, 4), keepdim=True) - batch.query_y) ** 2).mean()
    assert mse_persist < mse_mean


def test_clouds_splits_differ(clouds):
    params = {s: clouds.task_params(s, torch.arange(50)) for s in SPLITS}
    winds = {s: set(p["wind_direction"].tolist()) for s, p in params.items()}
    assert not winds["train"] & winds["val"] and not winds["val"] & winds["test"]
    p = params["train"]
    assert ((p["cover"] >= 0.1) & (p["cover"] <= 0.9)).all()
    assert not torch.equal(
        clouds.get_tasks("train", torch.tensor([0])).support_x,
        clouds.get_tasks("test", torch.tensor([0])).support_x,
    )


def test_clouds_size_validation():
    with pytest.raises(ValueError, match="size=30 must be divisible by 4"):
        CloudSource(size=30)
    small = CloudSource(size=16, k_shot=2, k_query=1)
    batch = small.get_tasks("test", torch.tensor([3]))
    assert batch.support_x.shape == (1, 2, 3, 16, 16) and batch.query_y.shape == (1, 1, 1, 16, 16)


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def faces():
    return FacesSource()


@pytest.fixture(scope="module")
def tiles():
    return ImageTilesSource()


def test_faces_layout_and_pixels(faces):
    assert faces.default_model == "siren"
    assert [faces.num_tasks(s) for s in SPLITS] == [80, 10, 10]
    idx = torch.tensor([0, 5, 9])
    batch = faces.get_tasks("test", idx)
    check_layout(batch, faces, 3, 156, 625, "test")
    images = faces.images("test")[idx]
    assert torch.equal(batch.query_y.view(3, 25, 25), images)  # raster order, all pixels
    assert torch.equal(batch.query_x[0], pixel_grid(25, 25))
    # support values are the image at the support coordinates
    rc = ((batch.support_x + 1) / 2 * 24).round().long()
    assert torch.equal(
        batch.support_y[..., 0], images[torch.arange(3)[:, None], rc[..., 0], rc[..., 1]]
    )
    assert batch.support_x.abs().max() <= 1 and batch.query_y.abs().max() <= 1
    assert_same_batch(batch, faces.get_tasks("test", idx))
    # each task has its own random support pixels
    assert not torch.equal(batch.support_x[0], batch.support_x[1])


def test_faces_split_by_face(faces):
    ids = {s: set(faces.face_ids(s)) for s in SPLITS}
    assert [len(v) for v in ids.values()] == [80, 10, 10]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(100))
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"]


def test_tiles_split_by_photo(tiles):
    photos = {s: set(tiles.photos(s)) for s in SPLITS}
    assert not photos["train"] & photos["test"] and not photos["train"] & photos["val"]
    assert not photos["val"] & photos["test"]
    for s in SPLITS:
        info = tiles.tile_info(s)
        assert len(info) == tiles.num_tasks(s) > 0
        assert {name for name, _, _ in info} <= set(PHOTO_SPLITS[s])
    batch = tiles.get_tasks("val", torch.arange(4))
    check_layout(batch, tiles, 4, 256, 1024, "val")
    assert torch.equal(batch.query_y.view(4, 32, 32), tiles.images("val")[:4])


def test_pixel_source_query_count_and_errors():
    src = FacesSource(k_shot=50, k_query=100, masks_per_image=3)
    assert src.num_tasks("train") == 240
    batch = src.get_tasks("train", torch.tensor([0, 1]))
    assert batch.support_x.shape == (2, 50, 2) and batch.query_x.shape == (2, 100, 2)
    sup = {tuple(v) for v in batch.support_x[0].tolist()}
    qry = {tuple(v) for v in batch.query_x[0].tolist()}
    assert not sup & qry  # a counted query excludes the support pixels
    assert not torch.equal(batch.support_x[0], batch.support_x[1])  # same face, another mask
    with pytest.raises(ValueError, match="k_shot=625 must be below the 625 pixels"):
        FacesSource(k_shot=625)
    with pytest.raises(ValueError, match="k_shot \\+ k_query = 700 exceeds the 625 image pixels"):
        FacesSource(k_shot=100, k_query=600)
    with pytest.raises(ValueError, match="tile_size=2 must be an int >= 4"):
        ImageTilesSource(tile_size=2)


# --------------------------------------------------------------------------- glyphs


@pytest.fixture(scope="module")
def glyphs():
    src = GlyphSource(max_fonts_per_char=3, system_fonts=False, num_tasks=(200, 50, 50))
    assert src.bank.num_classes > 0  # render once for the module
    return src


def test_glyph_layout_and_labels(glyphs):
    assert glyphs.likelihood == "categorical" and glyphs.num_classes == 5
    assert glyphs.default_model == "conv4" and glyphs.y_shape == ()
    batch = glyphs.get_tasks("train", torch.arange(6))
    check_layout(batch, glyphs, 6, 5, 25, "train")
    assert batch.support_x.min() >= 0 and batch.support_x.max() <= 1
    for b in range(6):
        assert torch.equal(torch.bincount(batch.support_y[b], minlength=5), torch.full((5,), 1))
        assert torch.equal(torch.bincount(batch.query_y[b], minlength=5), torch.full((5,), 5))
        assert (batch.query_x[b].flatten(1).amax(1) > 0.5).all()  # every image has ink
    assert_same_batch(batch, glyphs.get_tasks("train", torch.arange(6)))
    # labels are permuted per episode
    first = {tuple(batch.support_y[b].tolist()) for b in range(6)}
    assert len(first) > 1


def test_glyph_alphabet_splits_disjoint(glyphs):
    bank = glyphs.bank
    assert bank.num_classes > 500
    assert (bank.counts >= 2).all() and (bank.counts <= 3).all()
    alph = {s: set(glyphs.alphabets(s)) for s in SPLITS}
    assert not alph["train"] & alph["val"] and not alph["train"] & alph["test"]
    assert not alph["val"] & alph["test"]
    chars = {s: {bank.chars[i] for i in glyphs.classes(s).tolist()} for s in SPLITS}
    assert not chars["train"] & chars["test"]
    for s in SPLITS:
        cls = glyphs.episode_classes(s, torch.arange(20))
        assert all(bank.alphabets[c] in ALPHABET_SPLITS[s] for c in cls.flatten().tolist())
        assert all(len(set(row)) == 5 for row in cls.tolist())


def test_glyph_images_match_classes():
    src = GlyphSource(
        n_way=3, k_shot=2, k_query=2, max_fonts_per_char=3, system_fonts=False, jitter=False
    )
    batch = src.get_tasks("val", torch.tensor([0, 1]))
    cls = src.episode_classes("val", torch.tensor([0, 1]))
    bank = src.bank
    for b in range(2):
        for x, label in zip(batch.support_x[b], batch.support_y[b], strict=True):
            c = int(cls[b, label])
            rows = bank.images[bank.offsets[c] : bank.offsets[c] + bank.counts[c]].float() / 255
            assert (rows - x[0]).abs().flatten(1).amax(1).min() < 1e-6


def test_glyph_errors():
    with pytest.raises(ValueError, match="n_way=1 must be an int >= 2"):
        GlyphSource(n_way=1)
    with pytest.raises(ValueError, match="max_fonts_per_char=2 must be >= min_fonts=3"):
        GlyphSource(max_fonts_per_char=2, min_fonts=3)
    big = GlyphSource(n_way=5000, max_fonts_per_char=3, system_fonts=False)
    with pytest.raises(ValueError, match="n_way=5000 exceeds the .* glyph classes of split"):
        big.get_tasks("train", torch.tensor([0]))
