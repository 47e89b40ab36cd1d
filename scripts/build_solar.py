#!/usr/bin/env python3
"""Builds ``hvi/data/solar.nc``: hourly global horizontal irradiance (GHI) of real sites.

The measured / satellite-derived irradiance comes from the example data files
that pvlib-python 0.11.2 shipped in ``pvlib/data/`` (newer pvlib releases no
longer ship most of them). This script runs ONLY at build time, in its own
virtual environment with that pinned pvlib; ``hvi`` itself never imports
pvlib: every clear-sky quantity is precomputed into the file.

Rebuild (exact commands; Python 3.11)::

    python3 -m venv /tmp/solar-build
    /tmp/solar-build/bin/pip install -r scripts/requirements-solar.txt
    /tmp/solar-build/bin/python scripts/build_solar.py --out hvi/data/solar.nc

Verify the shipped file (rebuilds into a temporary file and compares; exit
status 0 when the bytes are identical, 1 when they differ but every value
agrees within one quantisation step and all attributes match, 2 otherwise)::

    /tmp/solar-build/bin/python scripts/build_solar.py --check hvi/data/solar.nc

Reproducibility: with the pinned versions of requirements-solar.txt the output
is byte-identical from run to run (no timestamps in attributes, HDF5 object
time tracking off, fixed chunking, zlib level 9 + shuffle, values quantised to
integers before storage). Another HDF5/h5py/h5netcdf version changes the bytes
(``_NCProperties`` names the library versions), a different libm may move a
value by one quantisation step; ``--check`` then falls back to comparing values.

What is in the file (dims ``site`` x ``day`` x ``hour``):

* ``day`` = day of the (non-leap) year, 0 = 1 January; ``hour`` = hour of the
  local *standard* time day (the site's fixed UTC offset, no daylight saving),
  each value belongs to the interval ``[hour, hour + 1)``.
* ``ghi``          measured / satellite-derived GHI in W/m2, as the source gives it
  (hourly means for TMY2/TMY3; see each site's ``sampling`` for the others).
* ``ghi_clearsky`` pvlib Ineichen-Perez clear-sky GHI in W/m2 with the Linke
  turbidity from pvlib's bundled ``LinkeTurbidities.h5`` (monthly climatology,
  interpolated to the day) and the site's altitude for the air pressure,
  sampled exactly like the measurement (mean of 60 one-minute values for an
  hourly mean, the same instants/weights for instantaneous samples), so that
  ``ghi / ghi_clearsky`` is a consistent clear-sky index.
* ``zenith``       apparent solar zenith in degrees at the interval midpoint.
* ``date``         the source date of each local day as YYYYMMDD (typical
  meteorological years splice months of different years).

Sources (all from pvlib 0.11.2 ``pvlib/data``) and why others are left out are
listed in ``SITES`` / ``SKIPPED`` below and in each site's attributes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

N_DAYS = 365
QUANT = {"ghi": 0.1, "ghi_clearsky": 0.1, "zenith": 0.01}  # int16 scale factors
PVLIB_VERSION = "0.11.2"

NREL_LICENCE = (
    "Public data of the U.S. National Renewable Energy Laboratory (NREL) for the "
    "U.S. Department of Energy (National Solar Radiation Database); freely available "
    "and redistributable, acknowledge NREL/NSRDB as the source. Redistributed in "
    "pvlib-python (BSD-3-Clause) as example data."
)
PVGIS_LICENCE = (
    "(c) European Union, PVGIS, Joint Research Centre. Reuse is authorised provided "
    "the source is acknowledged (Commission Decision 2011/833/EU on the reuse of "
    "Commission documents). Radiation: PVGIS-SARAH3 (EUMETSAT CM SAF); meteo: ERA5."
)


@dataclass(frozen=True)
class Site:
    key: str
    name: str
    location: str  # physical location id: series of one location share it
    reader: str
    file: str
    provider: str
    licence: str
    citation: str


SITES: tuple[Site, ...] = (
    Site(
        "sand_point_ak", "Sand Point, Alaska, USA", "sand_point_ak", "tmy3", "703165TY.csv",
        "NREL, TMY3 (NSRDB 1991-2005 update), USAF station 703165",
        NREL_LICENCE,
        "Wilcox, S. and Marion, W. (2008) Users Manual for TMY3 Data Sets, NREL/TP-581-43156.",
    ),
    Site(
        "greensboro_nc", "Greensboro Piedmont Triad Intl., North Carolina, USA",
        "greensboro_nc", "tmy3", "723170TYA.CSV",
        "NREL, TMY3 (NSRDB 1991-2005 update), USAF station 723170",
        NREL_LICENCE,
        "Wilcox, S. and Marion, W. (2008) Users Manual for TMY3 Data Sets, NREL/TP-581-43156.",
    ),
    Site(
        "miami_fl", "Miami, Florida, USA", "miami_fl", "tmy2", "12839.tm2",
        "NREL, TMY2 (NSRDB 1961-1990), WBAN station 12839",
        NREL_LICENCE,
        "Marion, W. and Urban, K. (1995) User's Manual for TMY2s, NREL.",
    ),
    Site(
        "nw_colorado_2017", "NW Colorado, USA (NSRDB cell 401182), year 2017",
        "nw_colorado", "psm3", "test_read_psm3.csv",
        "NREL, NSRDB Physical Solar Model v3.2.2 (PSM3), 30-minute data of 2017",
        NREL_LICENCE,
        "Sengupta, M. et al. (2018) The National Solar Radiation Data Base (NSRDB), "
        "Renew. Sust. Energ. Rev. 89, 51-60.",
    ),
    Site(
        "nw_colorado_tmy", "NW Colorado, USA (NSRDB cell 401182), TMY-2017",
        "nw_colorado", "psm3_tmy_dump", "test_psm3_tmy-2017.csv",
        "NREL, NSRDB PSM3 typical meteorological year 'tmy-2017' (months of 1998-2015)",
        NREL_LICENCE,
        "Sengupta, M. et al. (2018) The National Solar Radiation Data Base (NSRDB), "
        "Renew. Sust. Energ. Rev. 89, 51-60.",
    ),
    Site(
        "piedmont_it", "Piedmont, Italy (45.000N 8.000E), PVGIS TMY 2005-2023",
        "piedmont_it", "pvgis_tmy", "tmy_45.000_8.000_2005_2023.json",
        "European Commission JRC, PVGIS 5.3 TMY (PVGIS-SARAH3 radiation, ERA5 meteo)",
        PVGIS_LICENCE,
        "Huld, T., Mueller, R., Gambardella, A. (2012) A new solar radiation database for "
        "estimating PV performance in Europe and Africa, Solar Energy 86, 1803-1815.",
    ),
)

SKIPPED: tuple[tuple[str, str], ...] = (
    ("bsrn-pay0616.dat.gz, bsrn-lr0100-pay0616.dat (BSRN Payerne, June 2016, 1 min)",
     "BSRN data release guidelines: data sets must not be passed to a third party "
     "without the agreement of the WRMC; also only one month long"),
    ("NLD_Amsterdam062400_IWEC.epw (ASHRAE IWEC)",
     "IWEC source data are (c) ASHRAE under a licence agreement; redistribution not clearly allowed"),
    ("Burlington, United States SolarAnywhere *.csv",
     "SolarAnywhere data, (c) Clean Power Research, proprietary"),
    ("PVsyst_demo.csv", "PVsyst demo simulation output, not an irradiance record"),
    ("pvwatts_8760_*.csv (Golden, CO)",
     "PVWatts model output: no GHI column (beam/diffuse only), weather source and time "
     "convention unstated"),
    ("pvgis_tmy_test.csv, tmy_45.000_8.000_2005_2023.{csv,epw,txt}, tmy_45.000_8.000_userhorizon.json",
     "same PVGIS TMY at 45N 8E as the JSON file used (duplicates)"),
    ("test_psm3_2017.csv", "pandas dump of the same NSRDB 2017 record as test_read_psm3.csv"),
    ("surfrad-slv16001.dat, midc_*.txt, SRML-day-EUPO1801.txt, CRN*.txt, abq19056.dat, "
     "msn19056.dat, cams_*.csv, test_psm3_2019_5min.csv, pvgis_hourly_*",
     "one day to a few days long: too short for (site, period) tasks"),
)


# --------------------------------------------------------------------------- readers
@dataclass
class Series:
    """One site-year on its source's own time stamps, before binning."""

    ghi: np.ndarray  # (n_bins,) float64 W/m2, already aggregated to hourly bins
    bin_start: "object"  # pandas DatetimeIndex, local standard time (tz-aware), bin start
    instants: "object"  # DatetimeIndex (n_bins * n_sub,) where clear sky is sampled
    weights: np.ndarray  # (n_sub,) weights of the instants within a bin
    latitude: float
    longitude: float
    altitude: float
    utc_offset: int  # hours
    sampling: str


def _hour_mean_instants(bin_start):
    """60 one-minute midpoints per hourly bin, weights 1/60."""
    import pandas as pd

    offs = pd.to_timedelta(np.arange(60) + 0.5, unit="min")
    inst = (bin_start.values[:, None] + offs.values[None, :]).ravel()
    inst = pd.DatetimeIndex(inst).tz_localize("UTC").tz_convert(bin_start.tz)
    return inst, np.full(60, 1.0 / 60.0)


def _fixed_tz(offset_hours: int) -> str:
    # Etc/GMT signs are inverted: UTC-7 is "Etc/GMT+7".
    return "UTC" if offset_hours == 0 else f"Etc/GMT{-offset_hours:+d}"


def read_site(site: Site, data_dir: str) -> Series:
    import pandas as pd
    from pvlib import iotools

    path = os.path.join(data_dir, site.file)
    if site.reader == "tmy3":
        data, meta = iotools.read_tmy3(path, map_variables=True)
        off = int(meta["TZ"])
        tz = _fixed_tz(off)
        # Hour-ending labels 01:00 .. 24:00 of the file's own date columns; the value is
        # the mean of the previous hour. (Rebuilt from the raw columns: pvlib 0.11.2
        # turns "02/28/1996 24:00" into 1 March, skipping the leap day.)
        hh = data["Time (HH:MM)"].str.split(":").str[0].astype(int).to_numpy()
        start = pd.DatetimeIndex(
            pd.to_datetime(data["Date (MM/DD/YYYY)"].to_numpy(), format="%m/%d/%Y")
            + pd.to_timedelta(hh - 1, unit="h")).tz_localize(tz)
        inst, w = _hour_mean_instants(start)
        return Series(data["ghi"].to_numpy(float), start, inst, w, float(meta["latitude"]),
                      float(meta["longitude"]), float(meta["altitude"]), off,
                      "hourly mean (TMY3, hour-ending labels in local standard time)")
    if site.reader == "tmy2":
        data, meta = iotools.read_tmy2(path)
        off = int(meta["TZ"])
        tz = _fixed_tz(off)
        # pvlib gives every record the year of the first one; rebuild from the columns.
        # TMY2 hour h (1..24) is the mean over the hour ending at h.
        start = pd.DatetimeIndex(pd.to_datetime(pd.DataFrame({
            "year": 1900 + data["year"].to_numpy(int), "month": data["month"].to_numpy(int),
            "day": data["day"].to_numpy(int), "hour": data["hour"].to_numpy(int) - 1,
        }))).tz_localize(tz)
        inst, w = _hour_mean_instants(start)
        return Series(data["GHI"].to_numpy(float), start, inst, w, float(meta["latitude"]),
                      float(meta["longitude"]), float(meta["altitude"]), off,
                      "hourly mean (TMY2, hour-ending labels in local standard time)")
    if site.reader == "psm3":
        data, meta = iotools.read_psm3(path, map_variables=True)
        off = int(meta["Time Zone"])
        tz = _fixed_tz(off)
        idx = data.index.tz_convert(tz)
        g = pd.Series(data["ghi"].to_numpy(float), index=idx)
        if len(g) != 2 * 8760 or not (idx.minute.values[1::2] == 30).all():
            raise ValueError(f"{site.file}: expected 30-minute data of a non-leap year")
        # Instantaneous half-hourly values at hh:00 and hh:30 -> hour mean by the
        # trapezoid rule over hh:00, hh:30, hh+1:00 (the year's last end point,
        # a night value, repeats 23:30).
        v = g.to_numpy()
        v_next = np.append(v[2::2], v[-1])
        ghi = 0.25 * v[0::2] + 0.5 * v[1::2] + 0.25 * v_next
        start = idx[0::2]
        offs = pd.to_timedelta([0, 30, 60], unit="min")
        inst = pd.DatetimeIndex(
            (start.tz_convert("UTC").tz_localize(None).values[:, None] + offs.values[None, :]).ravel()
        ).tz_localize("UTC").tz_convert(tz)
        return Series(ghi, start, inst, np.array([0.25, 0.5, 0.25]), float(meta["latitude"]),
                      float(meta["longitude"]), float(meta["altitude"]), off,
                      "trapezoid hour mean of instantaneous values at hh:00, hh:30, hh+1:00 "
                      "(NSRDB PSM3 30-minute data, local standard time)")
    if site.reader == "psm3_tmy_dump":
        # pvlib's test fixture for get_psm3(40.5137, -108.5449, names='tmy-2017'),
        # stored as a plain pandas CSV without the PSM3 header (so read_psm3 cannot
        # parse it); same NSRDB cell as test_read_psm3.csv, whose metadata we take.
        _, meta = iotools.read_psm3(os.path.join(data_dir, "test_read_psm3.csv"),
                                    map_variables=True)
        data = pd.read_csv(path, index_col=0)
        off = int(meta["Time Zone"])
        tz = _fixed_tz(off)
        t = pd.DatetimeIndex(pd.to_datetime(pd.DataFrame({
            "year": data["Year"], "month": data["Month"], "day": data["Day"],
            "hour": data["Hour"], "minute": data["Minute"],
        }))).tz_localize(tz)
        if not (t.minute == 30).all():
            raise ValueError(f"{site.file}: expected hh:30 time stamps")
        start = t - pd.Timedelta(minutes=30)
        return Series(data["GHI"].to_numpy(float), start, t, np.array([1.0]),
                      float(meta["latitude"]), float(meta["longitude"]), float(meta["altitude"]),
                      off, "instantaneous value at hh:30 (NSRDB PSM3 TMY, local standard time)")
    if site.reader == "pvgis_tmy":
        data, months, inputs, _ = iotools.read_pvgis_tmy(path, map_variables=True)
        loc = inputs["location"]
        off = 1  # CET, the standard time at 8E in Italy
        tz = _fixed_tz(off)
        # PVGIS-SARAH values are instantaneous at the satellite slot hh:10 UTC at
        # this location (PVGIS hourly series of the same point, shipped next to it
        # in pvlib/data, are stamped hh:10); the TMY rounds the stamp to hh:00.
        t = (data.index + pd.Timedelta(minutes=10)).tz_convert(tz)
        start = t - pd.Timedelta(minutes=10)
        return Series(data["ghi"].to_numpy(float), start, t, np.array([1.0]),
                      float(loc["latitude"]), float(loc["longitude"]), float(loc["elevation"]),
                      off, "instantaneous value at hh:10 UTC (PVGIS-SARAH3 TMY, stamps rounded "
                      "to hh:00 UTC), binned into the local standard time hour containing it")
    raise ValueError(f"unknown reader {site.reader!r}")


# --------------------------------------------------------------------------- processing
def grid_site(site: Site, s: Series) -> dict[str, np.ndarray]:
    """Clear sky, zenith and the (day, hour) local-standard-time grid of one site."""
    import pandas as pd
    from pvlib.location import Location

    n = len(s.ghi)
    if n != N_DAYS * 24 or len(s.instants) != n * len(s.weights):
        raise ValueError(f"{site.key}: expected {N_DAYS * 24} hourly values, got {n}")
    loc = Location(s.latitude, s.longitude, tz=_fixed_tz(s.utc_offset), altitude=s.altitude)
    cs_inst = loc.get_clearsky(s.instants, model="ineichen")["ghi"].to_numpy(float)
    cs = (cs_inst.reshape(n, len(s.weights)) * s.weights[None, :]).sum(axis=1)
    mid = s.bin_start + pd.Timedelta(minutes=30)
    zen = loc.get_solarposition(mid)["apparent_zenith"].to_numpy(float)

    # Position of every bin on the (day-of-non-leap-year, hour) grid.
    month_start = np.cumsum([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30])
    if ((s.bin_start.month == 2) & (s.bin_start.day == 29)).any():
        raise ValueError(f"{site.key}: 29 February found")
    day = month_start[s.bin_start.month.to_numpy() - 1] + s.bin_start.day.to_numpy() - 1
    hour = s.bin_start.hour.to_numpy()
    flat = day * 24 + hour
    if np.unique(flat).size != n:
        raise ValueError(f"{site.key}: (day, hour) bins are not unique")
    out = {}
    for name, v in (("ghi", s.ghi), ("ghi_clearsky", cs), ("zenith", zen)):
        if not np.isfinite(v).all():
            raise ValueError(f"{site.key}: non-finite {name}")
        g = np.empty(n)
        g[flat] = v
        out[name] = g.reshape(N_DAYS, 24)
    out["ghi"] = np.clip(out["ghi"], 0.0, None)  # a few sources carry tiny negatives
    date = np.zeros(N_DAYS, np.int32)
    d = s.bin_start
    date[day] = (d.year * 10000 + d.month * 100 + d.day).to_numpy()
    out["date"] = date
    return out


def build(out_path: str, data_dir: str | None = None, quiet: bool = False) -> None:
    import h5netcdf
    import h5py
    import pvlib

    if pvlib.__version__ != PVLIB_VERSION:
        raise SystemExit(f"needs pvlib=={PVLIB_VERSION} (found {pvlib.__version__}); "
                         "see the commands at the top of this script.")
    data_dir = data_dir or os.path.join(os.path.dirname(pvlib.__file__), "data")
    per_site, series = [], []
    for site in SITES:
        s = read_site(site, data_dir)
        g = grid_site(site, s)
        per_site.append(g)
        series.append(s)
        if not quiet:
            day_ok = g["zenith"] < 85
            kt = g["ghi"][day_ok] / g["ghi_clearsky"][day_ok]
            print(f"{site.key:18s} lat={s.latitude:8.3f} lon={s.longitude:9.3f} "
                  f"alt={s.altitude:6.0f} UTC{s.utc_offset:+d} mean GHI={g['ghi'].mean():6.1f} "
                  f"mean cs={g['ghi_clearsky'].mean():6.1f} median kt(day)={np.median(kt):.3f}")

    def q(name: str, v: np.ndarray) -> np.ndarray:
        r = np.round(v / QUANT[name])
        if r.min() < -32767 or r.max() > 32767:
            raise ValueError(f"{name} out of int16 range")
        return r.astype(np.int16)

    n_site = len(SITES)
    tmp = out_path + ".tmp"
    # Root group without HDF5 object time stamps (datasets have none by default in
    # h5py); link/attribute creation order tracked as h5netcdf would ask h5py to.
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    order = h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED
    fcpl.set_link_creation_order(order)
    fcpl.set_attr_creation_order(order)
    fcpl.set_obj_track_times(False)
    h5file = h5py.File(h5py.h5f.create(tmp.encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl))
    with h5file, h5netcdf.File(h5file, "w") as f:
        f.attrs["title"] = "Hourly global horizontal irradiance and clear-sky irradiance of real sites"
        f.attrs["Conventions"] = "CF-1.8"
        f.attrs["source"] = (f"example data files of pvlib-python {PVLIB_VERSION} (pvlib/data), "
                             "read with pvlib's iotools readers")
        f.attrs["history"] = (f"built by scripts/build_solar.py with pvlib {PVLIB_VERSION}, "
                              f"numpy {np.__version__}, h5netcdf {h5netcdf.__version__} "
                              "(see scripts/requirements-solar.txt)")
        f.attrs["clear_sky_model"] = (
            "pvlib.location.Location.get_clearsky(model='ineichen'): Ineichen-Perez with "
            "Linke turbidity from pvlib's LinkeTurbidities.h5 (monthly, interpolated to the "
            "day) and pressure from the site altitude; sampled like the measurement")
        f.attrs["time_convention"] = (
            "day = day of the non-leap year (0 = 1 Jan); hour = interval [hour, hour+1) of "
            "the site's local standard time (fixed UTC offset, no daylight saving)")
        f.attrs["licence"] = ("per site, see the site variable 'licence'; NREL data public, "
                              "PVGIS reuse with acknowledgement")
        f.attrs["skipped_sources"] = "; ".join(f"{a}: {b}" for a, b in SKIPPED)
        f.dimensions = {"site": n_site, "day": N_DAYS, "hour": 24}

        def strvar(name: str, values: list[str], long_name: str) -> None:
            v = f.create_variable(name, ("site",), dtype=h5py.string_dtype("utf-8"))
            v[:] = np.array(values, dtype=object)
            v.attrs["long_name"] = long_name

        v = f.create_variable("day", ("day",), dtype=np.int16)
        v[:] = np.arange(N_DAYS, dtype=np.int16)
        v.attrs["long_name"] = "day of the non-leap year, 0 = 1 January"
        v = f.create_variable("hour", ("hour",), dtype=np.int16)
        v[:] = np.arange(24, dtype=np.int16)
        v.attrs["long_name"] = "start of the hour interval, local standard time"
        v.attrs["units"] = "hour"
        strvar("site", [s.key for s in SITES], "site-year key")
        strvar("name", [s.name for s in SITES], "site name")
        strvar("location", [s.location for s in SITES],
               "physical location; site-years sharing it are one site for splits")
        strvar("source_file", [f"pvlib/data/{s.file}" for s in SITES],
               "file in pvlib-python's data directory")
        strvar("provider", [s.provider for s in SITES], "data provider")
        strvar("licence", [s.licence for s in SITES], "licence / terms of reuse")
        strvar("citation", [s.citation for s in SITES], "reference for the data")
        strvar("provenance", [
            f"pvlib-python {PVLIB_VERSION} pvlib/data/{site.file}, read with "
            + {"tmy3": "pvlib.iotools.read_tmy3", "tmy2": "pvlib.iotools.read_tmy2",
               "psm3": "pvlib.iotools.read_psm3",
               "psm3_tmy_dump": "pandas.read_csv (pvlib test fixture of get_psm3 'tmy-2017'; "
                                "metadata from test_read_psm3.csv)",
               "pvgis_tmy": "pvlib.iotools.read_pvgis_tmy"}[site.reader]
            for site in SITES], "where the values come from")
        strvar("sampling", [s.sampling for s in series], "what one hourly GHI value is")
        strvar("timezone", [f"UTC{s.utc_offset:+03d}:00" for s in series],
               "local standard time zone (fixed offset)")
        for name, units, vals in (
            ("latitude", "degrees_north", [s.latitude for s in series]),
            ("longitude", "degrees_east", [s.longitude for s in series]),
            ("altitude", "m", [s.altitude for s in series]),
            ("utc_offset", "hour", [float(s.utc_offset) for s in series]),
        ):
            v = f.create_variable(name, ("site",), dtype=np.float64)
            v[:] = np.array(vals, dtype=np.float64)
            v.attrs["units"] = units
        v = f.create_variable("date", ("site", "day"), dtype=np.int32,
                              chunks=(1, N_DAYS), compression="gzip", compression_opts=9,
                              shuffle=True)
        v[:] = np.stack([g["date"] for g in per_site])
        v.attrs["long_name"] = "source date of the local day, YYYYMMDD"
        for name, units, long_name in (
            ("ghi", "W m-2", "global horizontal irradiance"),
            ("ghi_clearsky", "W m-2", "Ineichen-Perez clear-sky global horizontal irradiance"),
            ("zenith", "degree", "apparent solar zenith angle at the interval midpoint"),
        ):
            v = f.create_variable(name, ("site", "day", "hour"), dtype=np.int16,
                                  chunks=(1, N_DAYS, 24), compression="gzip",
                                  compression_opts=9, shuffle=True)
            v[:] = np.stack([q(name, g[name]) for g in per_site])
            v.attrs["units"] = units
            v.attrs["long_name"] = long_name
            v.attrs["scale_factor"] = np.float32(QUANT[name])
    os.replace(tmp, out_path)
    if not quiet:
        print(f"wrote {out_path}: {os.path.getsize(out_path)} bytes, sha256 {sha256(out_path)}")


def sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def read_all(path: str) -> tuple[dict, dict]:
    import h5netcdf

    vals, attrs = {}, {}
    with h5netcdf.File(path, "r") as f:
        attrs["/"] = {k: str(v) for k, v in f.attrs.items() if k != "_NCProperties"}
        for name, v in f.variables.items():
            vals[name] = v[...]
            attrs[name] = {k: str(a) for k, a in v.attrs.items()}
    return vals, attrs


def check(path: str, data_dir: str | None = None) -> int:
    with tempfile.TemporaryDirectory() as d:
        fresh = os.path.join(d, "solar.nc")
        build(fresh, data_dir, quiet=True)
        if sha256(fresh) == sha256(path):
            print(f"OK: rebuild is byte-identical to {path} (sha256 {sha256(path)})")
            return 0
        a_vals, a_attrs = read_all(path)
        b_vals, b_attrs = read_all(fresh)
    problems = []
    if a_attrs != b_attrs:
        problems.append("attributes differ")
    if set(a_vals) != set(b_vals):
        problems.append(f"variables differ: {sorted(set(a_vals) ^ set(b_vals))}")
    for name in sorted(set(a_vals) & set(b_vals)):
        a, b = a_vals[name], b_vals[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{name}: shape/dtype {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}")
        elif a.dtype.kind in "iuf":
            diff = np.abs(a.astype(np.int64) - b.astype(np.int64)) if a.dtype.kind in "iu" \
                else np.abs(a - b)
            # int16 quantised fields may move by one step (libm differences).
            tol = 1 if name in QUANT else 0
            if diff.max(initial=0) > tol:
                problems.append(f"{name}: max difference {diff.max()} > {tol}")
        elif not (a == b).all():
            problems.append(f"{name}: values differ")
    if problems:
        print("MISMATCH: " + "; ".join(problems))
        return 2
    print(f"bytes differ but all values agree within one quantisation step: {path}")
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", help="write the netCDF file here")
    g.add_argument("--check", metavar="FILE", help="rebuild and compare with FILE")
    p.add_argument("--data-dir", help="pvlib data directory (default: the installed pvlib's)")
    a = p.parse_args(argv)
    if a.check:
        return check(a.check, a.data_dir)
    build(a.out, a.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
