"""Real solar-irradiance forecasting tasks: next period's clear-sky-index map.

Data: ``hvi/data/solar.nc`` (built by ``scripts/build_solar.py`` from the
example files that pvlib-python 0.11.2 shipped; see that script for provenance,
licences and how to rebuild). It holds hourly global horizontal irradiance
``ghi``, the Ineichen-Perez clear-sky ``ghi_clearsky`` and the solar ``zenith``
of six site-years at five locations on a ``(site, day, hour)`` grid in local
standard time. Nothing here imports pvlib: every clear-sky quantity is in the
file.

**Maps.** The clear-sky index ``kt = ghi / ghi_clearsky`` is clipped to
``[0, kt_max]`` (default 1.5) on daylight hours (apparent zenith at the
interval midpoint ``< zenith_max``, default 85 deg) and set to ``0`` at night.
A *period* is ``days`` consecutive days (default 8); its map is
``days x hours`` (rows = days, columns = a fixed block of ``hours`` local
standard time hours per site, default 16, the block with the most annual
clear-sky energy, i.e. centred on the site's mean solar noon).

**Examples.** For target period ``p``: ``x`` has three channels, the kt maps
of periods ``p-2`` and ``p-1`` and the clear-sky GHI map of period ``p`` in
kW/m2 (zero at night, so ``x[2] > 0`` is the daylight mask of the target);
``y`` is the kt map of period ``p``. So ``x_shape = (3, days, hours)``,
``y_shape = (1, days, hours)``.

**Tasks.** A task is one site-year and a window of ``2 + k_shot + k_query``
consecutive periods: the support set is the first ``k_shot`` examples and
the query set the following ``k_query`` (condition on the past, forecast the
future). Windows start every ``stride`` days (default 8) inside contiguous
day ranges that belong to one split, so splits never share a (site, day):

* the held-out location (``test_site``, default Greensboro, NC) is test only;
* each other site-year holds out one third of its year (days 0-121, 122-242 or
  243-364, see :data:`HOLDOUT`) for val or test and trains on the rest;
  the thirds rotate so every season appears in train.

With the defaults there are 73 train, 12 val and 42 test tasks of 5 + 5
examples each (``x`` 3 x 8 x 16, ``y`` 1 x 8 x 16). All examples are
precomputed into tensors at construction; :meth:`SolarSource.get_tasks` only
indexes.

**Baselines** (functions of the batch alone): :func:`persistence` (smart
persistence of the clear-sky index: the last observed day's kt profile for
every day of the target period) and :func:`climatology` (the task's mean
daylight kt profile over its support targets).
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from hvi.data.base import SPLITS, Split, TaskSource, check_int, check_split, register_source
from hvi.tasks import TaskBatch

__all__ = ["SolarSource", "persistence", "climatology", "daylight_mask", "load_solar", "HOLDOUT"]

N_DAYS = 365
#: Day ranges (thirds of the year) that a site-year can hold out.
THIRDS: tuple[tuple[int, int], ...] = ((0, 122), (122, 243), (243, 365))
#: Site-year -> (split, third) it holds out when it is not the test site.
HOLDOUT: dict[str, tuple[str, int]] = {
    "sand_point_ak": ("test", 1),
    "greensboro_nc": ("val", 0),
    "miami_fl": ("val", 2),
    "nw_colorado_2017": ("test", 0),
    "nw_colorado_tmy": ("val", 1),
    "piedmont_it": ("val", 0),
}


def _text(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


@functools.lru_cache(maxsize=4)
def load_solar(path: str | None = None) -> dict:
    """Reads the shipped ``solar.nc`` (or the file at ``path``) into numpy arrays.

    Args:
        path: A netCDF file written by ``scripts/build_solar.py``; defaults to
            the copy shipped in the ``hvi.data`` package.

    Returns:
        ``ghi``, ``ghi_clearsky``, ``zenith`` as float64 ``(site, 365, 24)``
        arrays, ``date`` int32 ``(site, 365)``, and per-site lists/arrays
        ``site``, ``name``, ``location``, ``latitude``, ``longitude``,
        ``altitude``, ``timezone``, ``source_file``, ``provider``, ``licence``,
        ``provenance``, ``citation``, ``sampling``, plus the file's global
        attributes under ``attrs``.
    """
    import h5netcdf

    def read(p) -> dict:
        out: dict = {}
        with h5netcdf.File(p, "r") as f:
            out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            for name in ("ghi", "ghi_clearsky", "zenith"):
                v = f.variables[name]
                out[name] = v[...].astype(np.float64) * float(v.attrs.get("scale_factor", 1.0))
            out["date"] = np.asarray(f.variables["date"][...], dtype=np.int32)
            for name in ("latitude", "longitude", "altitude", "utc_offset"):
                out[name] = np.asarray(f.variables[name][...], dtype=np.float64)
            for name in ("site", "name", "location", "timezone", "source_file", "provider",
                         "licence", "provenance", "citation", "sampling"):
                out[name] = _text(f.variables[name][...])
        return out

    if path is not None:
        return read(str(path))
    with resources.as_file(resources.files("hvi.data").joinpath("solar.nc")) as p:
        return read(str(p))


def daylight_mask(batch: TaskBatch) -> Tensor:
    """Bool mask of the daylight pixels of the query targets, shaped like ``query_y``."""
    return batch.query_x[:, :, 2:3] > 0


def persistence(batch: TaskBatch) -> Tensor:
    """Smart persistence of the clear-sky index, shaped like ``batch.query_y``.

    The forecast for every day of the target period is the last observed day's
    kt profile (``x`` channel 1, last row): ``kt(d, h) = kt(last day, h)``, the
    standard day-ahead smart persistence (GHI forecast = that kt times the
    clear-sky GHI) held over the whole period. Hours that were night on the last
    day but are daylight in the target get that day's mean daylight kt; night
    pixels of the target are 0 like the targets.
    """
    last = batch.query_x[:, :, 1, -1, :]  # (B, Nq, W)
    valid = last > 0
    n = valid.sum(-1, keepdim=True)
    mean = (last * valid).sum(-1, keepdim=True) / n.clamp(min=1)
    profile = torch.where(valid, last, mean)
    pred = profile.unsqueeze(-2).unsqueeze(2).expand_as(batch.query_y)
    return torch.where(daylight_mask(batch), pred, torch.zeros_like(pred))


def period_mean_persistence(batch: TaskBatch) -> Tensor:
    """Persistence of the previous period's mean daily kt profile, shaped like ``query_y``.

    ``kt(d, h)`` = mean over the daylight days of period ``p-1`` at hour ``h``
    (hours never daylight in ``p-1`` take its overall daylight mean); 0 at night.
    """
    prev = batch.query_x[:, :, 1]  # (B, Nq, D, W)
    valid = prev > 0
    hour_n = valid.sum(-2)
    hour_mean = (prev * valid).sum(-2) / hour_n.clamp(min=1)
    all_mean = (prev * valid).sum((-2, -1)) / valid.sum((-2, -1)).clamp(min=1)
    profile = torch.where(hour_n > 0, hour_mean, all_mean.unsqueeze(-1))
    pred = profile.unsqueeze(-2).unsqueeze(2).expand_as(batch.query_y)
    return torch.where(daylight_mask(batch), pred, torch.zeros_like(pred))


def climatology(batch: TaskBatch) -> Tensor:
    """The task's mean daylight kt per hour over its support targets, shaped like ``query_y``.

    Hours without a daylight support value take the support's overall daylight
    mean; night pixels of the target are 0.
    """
    y = batch.support_y[:, :, 0]  # (B, Ns, D, W)
    day = batch.support_x[:, :, 2] > 0
    hour_n = day.sum((1, 2))
    hour_mean = (y * day).sum((1, 2)) / hour_n.clamp(min=1)  # (B, W)
    all_mean = (y * day).sum((1, 2, 3)) / day.sum((1, 2, 3)).clamp(min=1)
    profile = torch.where(hour_n > 0, hour_mean, all_mean.unsqueeze(-1))  # (B, W)
    pred = profile[:, None, None, None, :].expand_as(batch.query_y)
    return torch.where(daylight_mask(batch), pred, torch.zeros_like(pred))


@register_source("solar")
class SolarSource(TaskSource):
    """Forecast the next period's clear-sky-index map of real sites (see module doc).

    Args:
        k_shot: Support examples (consecutive periods) per task. Defaults to 5.
        k_query: Query examples (the periods after the support) per task. Defaults to 5.
        days: Days per period = map height; a multiple of 4. Defaults to 8.
        hours: Daylight hours per day = map width; a multiple of 4, at most 24.
            Defaults to 16.
        stride: Days between the starts of consecutive task windows. Defaults to 8.
        test_site: Location held out entirely for test. Defaults to ``"greensboro_nc"``.
        zenith_max: Hours with a larger apparent zenith (deg) are night. Defaults to 85.
        kt_max: Upper clip of the clear-sky index. Defaults to 1.5.
        seed: Accepted for interface symmetry; the split of real data is fixed
            and does not depend on it. Defaults to 0.
        path: Another netCDF file built by ``scripts/build_solar.py``; defaults
            to the shipped one.
        mask_night: Mark night pixels of the targets as unobserved
            (``support_mask``/``query_mask`` = daylight), so that neither the
            likelihood nor the metrics score them (their kt is 0 by
            construction, which any forecast given the clear-sky channel gets
            right). ``False`` scores every pixel. Defaults to True.

    Raises:
        ValueError: If an argument is out of range or a split would have no task.
    """

    likelihood = "gaussian"
    num_classes = None
    default_model = "bayes_unet"

    def __init__(
        self,
        k_shot: int = 5,
        k_query: int = 5,
        days: int = 8,
        hours: int = 16,
        stride: int = 8,
        test_site: str = "greensboro_nc",
        zenith_max: float = 85.0,
        kt_max: float = 1.5,
        seed: int = 0,
        path: str | None = None,
        mask_night: bool = True,
    ) -> None:
        self.k_shot = check_int("k_shot", k_shot, 1, "pass e.g. k_shot=5")
        self.k_query = check_int("k_query", k_query, 0, "pass e.g. k_query=5")
        self.days = check_int("days", days, 4, "pass e.g. days=8")
        self.hours = check_int("hours", hours, 4, "pass e.g. hours=16")
        for name, v in (("days", self.days), ("hours", self.hours)):
            if v % 4:
                raise ValueError(f"{name}={v} must be divisible by 4 (the U-Net downsamples twice).")
        if self.hours > 24:
            raise ValueError(f"hours={hours} must be at most 24.")
        self.stride = check_int("stride", stride, 1, "pass e.g. stride=8")
        self.seed = check_int("seed", seed, 0, "pass e.g. seed=0")
        if not 0 < zenith_max <= 90 or not kt_max > 0:
            raise ValueError(f"need 0 < zenith_max <= 90 and kt_max > 0, got {zenith_max}, {kt_max}.")
        self.zenith_max, self.kt_max = float(zenith_max), float(kt_max)
        if not isinstance(mask_night, bool):
            raise ValueError(f"mask_night={mask_night!r} must be true or false.")
        self.mask_night = mask_night
        data = load_solar(path)
        self.data = data
        self.sites: list[str] = list(data["site"])
        if test_site not in data["location"]:
            raise ValueError(
                f"test_site={test_site!r} is not a location of the solar data; "
                f"choose one of {sorted(set(data['location']))}."
            )
        self.test_site = test_site

        day = data["zenith"] < self.zenith_max  # (S, 365, 24)
        cs = data["ghi_clearsky"]
        day &= cs > 0
        kt = np.where(day, data["ghi"] / np.where(day, cs, 1.0), 0.0).clip(0.0, self.kt_max)
        csn = np.where(day, cs / 1000.0, 0.0)
        # Fixed block of `hours` hours per site: the most annual clear-sky energy.
        annual = cs.sum(axis=1)  # (S, 24)
        starts = np.array([
            int(np.argmax([a[h: h + self.hours].sum() for h in range(24 - self.hours + 1)]))
            for a in annual
        ])
        self.hour_start = starts
        self._kt = np.stack([kt[s, :, h: h + self.hours] for s, h in enumerate(starts)])
        self._cs = np.stack([csn[s, :, h: h + self.hours] for s, h in enumerate(starts)])

        self._windows: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}
        footprint = (2 + self.k_shot + self.k_query) * self.days
        self.footprint = footprint
        for si, (key, loc) in enumerate(zip(self.sites, data["location"])):
            for split, (a, b) in self._ranges(key, loc):
                for start in range(a, b - footprint + 1, self.stride):
                    self._windows[split].append((si, start))
        for split in SPLITS:
            if not self._windows[split]:
                raise ValueError(
                    f"split {split!r} has no task: a task spans (2 + k_shot + k_query) * days = "
                    f"{footprint} days but the held-out ranges are ~121 days; lower k_shot, "
                    "k_query or days."
                )
        self._x: dict[str, Tensor] = {}
        self._y: dict[str, Tensor] = {}
        for split in SPLITS:
            self._x[split], self._y[split] = self._examples(self._windows[split])

    def _ranges(self, key: str, location: str) -> list[tuple[str, tuple[int, int]]]:
        """Contiguous day ranges of one site-year and the split each belongs to."""
        if location == self.test_site:
            return [("test", (0, N_DAYS))]
        if key not in HOLDOUT:
            return [("train", (0, N_DAYS))]
        split, third = HOLDOUT[key]
        a, b = THIRDS[third]
        out = [(split, (a, b))]
        if a > 0:
            out.append(("train", (0, a)))
        if b < N_DAYS:
            out.append(("train", (b, N_DAYS)))
        return sorted(out, key=lambda r: r[1][0])

    def _examples(self, windows: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        n, D, W = self.k_shot + self.k_query, self.days, self.hours
        x = np.zeros((len(windows), n, 3, D, W), np.float32)
        y = np.zeros((len(windows), n, 1, D, W), np.float32)
        for t, (si, start) in enumerate(windows):
            periods = self._kt[si, start: start + (n + 2) * D].reshape(n + 2, D, W)
            cs = self._cs[si, start: start + (n + 2) * D].reshape(n + 2, D, W)
            x[t, :, 0] = periods[0:n]
            x[t, :, 1] = periods[1: n + 1]
            x[t, :, 2] = cs[2: n + 2]
            y[t, :, 0] = periods[2: n + 2]
        return torch.from_numpy(x), torch.from_numpy(y)

    @property
    def x_shape(self) -> tuple[int, ...]:
        """``(3, days, hours)``: kt of periods p-2, p-1 and clear-sky GHI of p in kW/m2."""
        return (3, self.days, self.hours)

    @property
    def y_shape(self) -> tuple[int, ...]:
        """``(1, days, hours)``: kt of period p."""
        return (1, self.days, self.hours)

    def _split(self, split: str) -> str:
        return check_split(split)

    def num_tasks(self, split: Split) -> int:
        """Number of tasks in ``split``."""
        return len(self._windows[self._split(split)])

    def get_tasks(self, split: Split, index: Tensor) -> TaskBatch:
        """The tasks at positions ``index`` of ``split`` (deterministic)."""
        split = self._split(split)
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        m = self.num_tasks(split)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= m):
            raise ValueError(f"task index out of range for split {split!r} with {m} tasks; use [0, {m}).")
        x = self._x[split].index_select(0, index)
        y = self._y[split].index_select(0, index)
        ns = self.k_shot
        day = x[:, :, 2:3] > 0 if self.mask_night else None
        return TaskBatch(
            support_x=x[:, :ns], support_y=y[:, :ns], query_x=x[:, ns:], query_y=y[:, ns:],
            task_index=index, num_tasks=m,
            support_mask=None if day is None else day[:, :ns],
            query_mask=None if day is None else day[:, ns:],
        )

    def task_info(self, split: Split) -> list[dict]:
        """Per task of ``split``: site, location, first/last day (0-based day of
        year, inclusive, context periods included) and the source dates."""
        out = []
        for si, start in self._windows[self._split(split)]:
            end = start + self.footprint - 1
            out.append({
                "site": self.sites[si], "location": self.data["location"][si],
                "first_day": start, "last_day": end,
                "first_date": int(self.data["date"][si, start]),
                "last_date": int(self.data["date"][si, end]),
            })
        return out

    # Baselines as methods too, like the other sources.
    persistence = staticmethod(persistence)
    period_mean_persistence = staticmethod(period_mean_persistence)
    climatology = staticmethod(climatology)
    daylight_mask = staticmethod(daylight_mask)
