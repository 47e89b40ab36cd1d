"""Images as functions for SIREN: pixel coordinate -> gray intensity.

Each task is one grayscale image. An example is ``x`` = the pixel's
``(row, col)`` coordinate in ``[-1, 1]^2`` (shape ``(2,)``; ``-1`` is the
top/left pixel centre, ``+1`` the bottom/right one) and ``y`` = its intensity
scaled from ``[0, 1]`` to ``[-1, 1]`` (shape ``(1,)``). All images ship with
scikit-image, so nothing is downloaded.

* Support: ``k_shot`` pixels drawn at random without replacement per task;
  the default ``k_shot=None`` is 25% of the pixels (156 of a 25x25 face, 256
  of a 32x32 tile).
* Query: ``k_query=None`` (default) gives *all* pixels of the image in raster
  order (row-major, so ``query_y.view(B, H, W)`` is the image; it includes the
  support pixels); an int gives that many random pixels not in the support.

The random pixel choice of task ``i`` is a pure function of
``(seed, split, i)``. With ``masks_per_image > 1`` each image appears as that
many consecutive tasks with different random supports.

Sources:

* ``"faces"`` (:class:`FacesSource`): the 100 faces of
  ``skimage.data.lfw_subset()`` (25x25, the first 100 of its 200 images; the
  rest are non-faces), split 80/10/10 by face with a seeded permutation.
* ``"images"`` (:class:`ImageTilesSource`): non-overlapping ``tile_size``
  tiles of the photos bundled with scikit-image, converted to gray (photos
  larger than 512 px are first downscaled to 512 px on the long side; tiles
  with an intensity std below ``min_std`` — blank sky, black borders — are
  dropped). Split by photo (see :data:`PHOTO_SPLITS`), so validation and test
  tiles come from photos never seen in training:

  - train: camera, astronaut, chelsea, immunohistochemistry, brick, grass,
    page, clock, hubble_deep_field, retina, cell
  - val: rocket, gravel, text
  - test: coffee, coins, moon
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from hvi.data.base import SPLITS, Split, TaskSource, check_int, check_split, register_source
from hvi.tasks import TaskBatch

__all__ = ["FacesSource", "ImageTilesSource", "PHOTO_SPLITS", "pixel_grid"]

PHOTO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "camera",
        "astronaut",
        "chelsea",
        "immunohistochemistry",
        "brick",
        "grass",
        "page",
        "clock",
        "hubble_deep_field",
        "retina",
        "cell",
    ),
    "val": ("rocket", "gravel", "text"),
    "test": ("coffee", "coins", "moon"),
}
"""Which scikit-image photos feed each split of :class:`ImageTilesSource`."""

DEFAULT_SUPPORT_FRACTION = 0.25
"""Fraction of the pixels used as support when ``k_shot`` is ``None``."""

_FACES_TAG = 0xFACE
_TILES_TAG = 0x711E
_MAX_SIDE = 512


def pixel_grid(height: int, width: int) -> Tensor:
    """Pixel-centre coordinates in ``[-1, 1]^2``, raster order.

    Args:
        height: Image height ``H``.
        width: Image width ``W``.

    Returns:
        Float32 tensor ``(H * W, 2)`` of ``(row, col)`` coordinates.
    """
    r = torch.linspace(-1.0, 1.0, height)
    c = torch.linspace(-1.0, 1.0, width)
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=-1)


class _PixelSource(TaskSource):
    """Shared machinery: tasks are images (``(N, H, W)`` in ``[-1, 1]`` per split)."""

    likelihood = "gaussian"
    num_classes = None
    default_model = "siren"
    _tag = 0

    def __init__(
        self,
        images: dict[str, Tensor],
        k_shot: int | None,
        k_query: int | None,
        masks_per_image: int,
        seed: int,
    ) -> None:
        self.seed = seed
        self._images = images
        _, h, w = images["train"].shape
        self.height, self.width = h, w
        npix = h * w
        if k_shot is None:
            k_shot = max(1, round(DEFAULT_SUPPORT_FRACTION * npix))
        self.k_shot = check_int(
            "k_shot", k_shot, 1, f"pass at most {npix - 1} or None for 25% of the pixels"
        )
        if self.k_shot >= npix:
            raise ValueError(
                f"k_shot={k_shot} must be below the {npix} pixels of an image; "
                f"pass e.g. k_shot={npix // 4}."
            )
        if k_query is not None:
            k_query = check_int("k_query", k_query, 1, "pass None for all pixels")
            if self.k_shot + k_query > npix:
                raise ValueError(
                    f"k_shot + k_query = {self.k_shot + k_query} exceeds the {npix} image pixels; "
                    f"lower k_query to at most {npix - self.k_shot} or pass None for all pixels."
                )
        self.k_query = k_query
        self.masks_per_image = check_int("masks_per_image", masks_per_image, 1, "pass e.g. 1")
        self._grid = pixel_grid(h, w)

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(2,)`` (row, col in ``[-1, 1]``)."""
        return (2,)

    @property
    def y_shape(self) -> tuple[int, ...]:
        """Shape of one target: ``(1,)`` (intensity in ``[-1, 1]``)."""
        return (1,)

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return (self.height, self.width)

    def num_tasks(self, split: Split) -> int:
        """Number of tasks in ``split`` (images times ``masks_per_image``)."""
        return self.images(split).shape[0] * self.masks_per_image

    def images(self, split: Split) -> Tensor:
        """All images of ``split``, float32 ``(N, H, W)`` in ``[-1, 1]``.

        Task ``i`` of the split shows image ``i // masks_per_image``.
        """
        check_split(split)
        return self._images[split]

    def get_tasks(self, split: Split, index: Tensor) -> TaskBatch:
        """Tasks ``index`` of ``split`` as a :class:`~hvi.tasks.TaskBatch` (see module doc)."""
        imgs = self.images(split)
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        m = self.num_tasks(split)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= m):
            raise ValueError(
                f"task index out of range for split {split!r} with {m} tasks; "
                f"use indices in [0, {m})."
            )
        sid = SPLITS.index(split)
        npix = self.height * self.width
        flat = imgs.reshape(imgs.shape[0], npix)
        sup, qry = [], []
        for i in index.tolist():
            state = np.random.SeedSequence((self.seed, self._tag, sid, i)).generate_state(
                1, np.uint64
            )
            perm = torch.randperm(npix, generator=torch.Generator().manual_seed(int(state[0])))
            sup.append(perm[: self.k_shot])
            if self.k_query is not None:
                qry.append(perm[self.k_shot : self.k_shot + self.k_query])
        b = index.numel()
        sup_idx = torch.stack(sup) if sup else torch.zeros(0, self.k_shot, dtype=torch.int64)
        if self.k_query is None:
            qry_idx = torch.arange(npix).expand(b, npix)
        else:
            qry_idx = torch.stack(qry) if qry else torch.zeros(0, self.k_query, dtype=torch.int64)
        values = flat[index // self.masks_per_image]  # (B, npix)
        return TaskBatch(
            support_x=self._grid[sup_idx],
            support_y=torch.gather(values, 1, sup_idx).unsqueeze(-1),
            query_x=self._grid[qry_idx],
            query_y=torch.gather(values, 1, qry_idx).unsqueeze(-1),
            task_index=index,
            num_tasks=m,
        )


@lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    from skimage.data import lfw_subset

    return np.asarray(lfw_subset()[:100], dtype=np.float32)  # (100, 25, 25) in [0, 1]


@register_source("faces")
class FacesSource(_PixelSource):
    """The 100 LFW faces bundled with scikit-image, as 25x25 SIREN tasks.

    Faces are split 80/10/10 into train/val/test by a permutation seeded with
    ``seed`` (see :meth:`face_ids`).

    Args:
        k_shot: Support pixels per task; ``None`` (default) is 25% (156).
        k_query: Query pixels per task; ``None`` (default) is all 625 pixels
            in raster order, an int that many random non-support pixels.
        masks_per_image: Tasks (random supports) per face. Defaults to 1.
        seed: Seed of the face split and of the pixel choices. Defaults to 0.

    Raises:
        ValueError: If an argument is out of range.
    """

    _tag = _FACES_TAG

    def __init__(
        self,
        k_shot: int | None = None,
        k_query: int | None = None,
        masks_per_image: int = 1,
        seed: int = 0,
    ) -> None:
        seed = check_int("seed", seed, 0, "pass e.g. seed=0")
        faces = _lfw_faces()
        perm = np.random.default_rng(np.random.SeedSequence((seed, _FACES_TAG))).permutation(
            len(faces)
        )
        ids = {"train": np.sort(perm[:80]), "val": np.sort(perm[80:90]), "test": np.sort(perm[90:])}
        self._face_ids = {k: v.tolist() for k, v in ids.items()}
        images = {k: torch.from_numpy(faces[v] * 2.0 - 1.0) for k, v in ids.items()}
        super().__init__(images, k_shot, k_query, masks_per_image, seed)

    def face_ids(self, split: Split) -> list[int]:
        """Indices into ``skimage.data.lfw_subset()`` of the faces of ``split``, ascending."""
        check_split(split)
        return list(self._face_ids[split])


def _gray_photo(name: str) -> np.ndarray:
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.transform import rescale

    im = np.asarray(getattr(data, name)())
    if im.ndim == 3:
        im = rgb2gray(im[..., :3])
    elif im.dtype == np.uint8:
        im = im / 255.0
    im = im.astype(np.float64)
    side = max(im.shape)
    if side > _MAX_SIDE:
        im = rescale(im, _MAX_SIDE / side, anti_aliasing=True)
    return np.clip(im, 0.0, 1.0)


@lru_cache(maxsize=8)
def _photo_tiles(
    tile_size: int, min_std: float
) -> dict[str, tuple[np.ndarray, list[tuple[str, int, int]]]]:
    out = {}
    for split, names in PHOTO_SPLITS.items():
        tiles, info = [], []
        for name in names:
            im = _gray_photo(name)
            for r in range(0, im.shape[0] - tile_size + 1, tile_size):
                for c in range(0, im.shape[1] - tile_size + 1, tile_size):
                    t = im[r : r + tile_size, c : c + tile_size]
                    if t.std() >= min_std:
                        tiles.append(t)
                        info.append((name, r, c))
        arr = (
            np.stack(tiles).astype(np.float32)
            if tiles
            else np.zeros((0, tile_size, tile_size), np.float32)
        )
        out[split] = (arr, info)
    return out


@register_source("images")
class ImageTilesSource(_PixelSource):
    """Gray tiles of the photos bundled with scikit-image, as SIREN tasks.

    Splits are by photo (:data:`PHOTO_SPLITS`); tiles are cut on a
    non-overlapping grid and kept in (photo, row, col) order.

    Args:
        tile_size: Tile height and width in pixels (>= 4). Defaults to 32.
        k_shot: Support pixels per task; ``None`` (default) is 25% of the tile.
        k_query: Query pixels per task; ``None`` (default) is all pixels in
            raster order, an int that many random non-support pixels.
        masks_per_image: Tasks (random supports) per tile. Defaults to 1.
        min_std: Tiles whose intensity std (on ``[0, 1]``) is below this are
            dropped as blank. Defaults to 0.03.
        seed: Seed of the pixel choices. Defaults to 0.

    Raises:
        ValueError: If an argument is out of range or a split gets no tiles.
    """

    _tag = _TILES_TAG

    def __init__(
        self,
        tile_size: int = 32,
        k_shot: int | None = None,
        k_query: int | None = None,
        masks_per_image: int = 1,
        min_std: float = 0.03,
        seed: int = 0,
    ) -> None:
        tile_size = check_int("tile_size", tile_size, 4, "pass e.g. tile_size=32")
        if (
            not isinstance(min_std, (int, float))
            or isinstance(min_std, bool)
            or not 0 <= min_std < 0.5
        ):
            raise ValueError(
                f"min_std={min_std!r} must be a float in [0, 0.5); pass e.g. min_std=0.03."
            )
        seed = check_int("seed", seed, 0, "pass e.g. seed=0")
        bank = _photo_tiles(tile_size, float(min_std))
        for split, (arr, _) in bank.items():
            if len(arr) == 0:
                raise ValueError(
                    f"tile_size={tile_size}, min_std={min_std} leave split {split!r} no tiles; "
                    "use a smaller tile_size or min_std."
                )
        self.tile_size = tile_size
        self._tile_info = {k: v[1] for k, v in bank.items()}
        images = {k: torch.from_numpy(v[0] * 2.0 - 1.0) for k, v in bank.items()}
        super().__init__(images, k_shot, k_query, masks_per_image, seed)

    def photos(self, split: Split) -> tuple[str, ...]:
        """Names of the ``skimage.data`` photos of ``split``."""
        check_split(split)
        return PHOTO_SPLITS[split]

    def tile_info(self, split: Split) -> list[tuple[str, int, int]]:
        """``(photo, top row, left col)`` of every tile of ``split``, in task order."""
        check_split(split)
        return list(self._tile_info[split])
