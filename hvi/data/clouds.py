"""Procedural 2-D cloud nowcasting: predict the next clear-sky-index frame.

A task is one region/day with its own weather regime, drawn from the task's
seed:

============================  =============================================
wind speed / direction        ``U[0.1, 1.5]`` px per frame, ``U[0, 2pi)``
cloud cover fraction          ``U[0.1, 0.9]``
spatial correlation length    ``U[0.08, 0.3] * size`` px
spectral slope                ``U[3.5, 5]`` (Matern-like power law)
evolution rate                ``U[0.01, 0.15]`` per frame (AR(1) ``rho = exp(-rate)``)
cloud optical thickness       ``U[0.5, 0.9]`` (attenuation of a full cloud)
cloud-edge enhancement        ``U[0, 0.15]``
sun elevation                 ``U[15, 65]`` deg, tilted by ``U[1, 4]`` deg across the domain
============================  =============================================

Generation (all in the Fourier domain, on a periodic grid twice the output
size, so the periodic wrap-around is not apparent in the central crop):

1. a Gaussian random field with spectrum ``(1 + (2 pi |k| L)^2)^(-slope/2)``,
   normalised to unit variance, is advected by the wind each frame with a
   subpixel Fourier phase ramp and evolved as an AR(1) process,
   ``F_{t+1} = rho * shift(F_t) + sqrt(1 - rho^2) * fresh``;
2. cloud opacity is a smooth sigmoid of the field around the threshold
   ``Phi^-1(1 - cover)``, so the expected cloudy fraction is ``cover``;
3. clear-sky index ``csi = 1 - thickness * opacity + enhancement * 4 opacity (1 - opacity)``;
4. the frame is ``csi`` times the clear-sky irradiance map
   ``sin(elevation)^1.15`` (a gentle gradient over the domain) divided by its
   domain mean, i.e. normalised to clear-sky-index units: values lie in about
   ``[0.1, 1.2]``.

An example is ``x`` = frames ``t-2, t-1, t`` (shape ``(3, size, size)``) and
``y`` = frame ``t+1`` (shape ``(1, size, size)``). Each task simulates
``4 * (k_shot + k_query)`` consecutive frames cut into non-overlapping windows
of four: the support examples are the first ``k_shot`` windows, the query
examples the later ones (condition on the recent past, forecast the future).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from hvi.data.base import Split, TaskSource, check_int, check_num_tasks, register_source, split_index
from hvi.tasks import TaskBatch

__all__ = ["CloudSource", "persistence"]

_SOURCE_TAG = 0xC10D
_PAD = 2  # simulate on a (2 size)^2 periodic grid, keep the centre crop
_SHARPNESS = 0.25  # width of the opacity sigmoid in field standard deviations


def persistence(batch: TaskBatch) -> Tensor:
    """Persistence baseline: predicts the next frame equals the last input frame.

    Args:
        batch: A batch from :class:`CloudSource` (``query_x`` of shape
            ``(B, Nq, 3, H, W)``).

    Returns:
        Tensor shaped like ``batch.query_y``: ``(B, Nq, 1, H, W)``.
    """
    return batch.query_x[:, :, -1:].clone()


@register_source("clouds")
class CloudSource(TaskSource):
    """Procedural spatial nowcasting of cloud clear-sky index (see module doc).

    Args:
        size: Height and width of the frames in pixels; a multiple of 4 (the
            U-Net halves it twice). Defaults to 32.
        k_shot: Support examples (time windows) per task. Defaults to 5.
        k_query: Query examples per task. Defaults to 5.
        num_tasks: Number of tasks in the (train, val, test) splits.
            Defaults to ``(2000, 200, 200)``.
        seed: Seed of the task population. Defaults to 0.

    Raises:
        ValueError: If an argument is out of range.
    """

    likelihood = "gaussian"
    num_classes = None
    default_model = "bayes_unet"

    def __init__(
        self,
        size: int = 32,
        k_shot: int = 5,
        k_query: int = 5,
        num_tasks: tuple[int, int, int] = (2000, 200, 200),
        seed: int = 0,
    ) -> None:
        size = check_int("size", size, 8, "pass e.g. size=32")
        if size % 4:
            raise ValueError(
                f"size={size} must be divisible by 4 (the U-Net downsamples twice); "
                f"pass e.g. size={4 * round(size / 4)}."
            )
        self.size = size
        self.k_shot = check_int("k_shot", k_shot, 1, "pass e.g. k_shot=5")
        self.k_query = check_int("k_query", k_query, 0, "pass e.g. k_query=5")
        self._num_tasks = check_num_tasks(num_tasks, "(2000, 200, 200)")
        self.seed = check_int("seed", seed, 0, "pass e.g. seed=0")
        g = _PAD * size
        ky = torch.fft.fftfreq(g, dtype=torch.float32)
        kx = torch.fft.rfftfreq(g, dtype=torch.float32)  # half plane: real fields via rfft2
        self._ky, self._kx = torch.meshgrid(ky, kx, indexing="ij")  # cycles per pixel
        nyq = (self._ky.abs() == 0.5) | (self._kx.abs() == 0.5)
        self._keep = (~nyq).to(torch.float32)  # drop Nyquist: keeps subpixel shifts real
        # weight of each half-plane frequency in the full-plane mean (interior columns count twice)
        self._weight = torch.where((self._kx == 0) | (self._kx == 0.5), 1.0, 2.0) / g**2
        c = torch.linspace(-0.5, 0.5, size, dtype=torch.float32)
        self._v, self._u = torch.meshgrid(c, c, indexing="ij")  # domain coordinates

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(3, size, size)`` (frames t-2, t-1, t)."""
        return (3, self.size, self.size)

    @property
    def y_shape(self) -> tuple[int, ...]:
        """Shape of one target: ``(1, size, size)`` (frame t+1)."""
        return (1, self.size, self.size)

    def num_tasks(self, split: Split) -> int:
        """Number of tasks in ``split``."""
        return self._num_tasks[split_index(split)]

    @staticmethod
    def persistence(batch: TaskBatch) -> Tensor:
        """Persistence baseline (see :func:`persistence`)."""
        return persistence(batch)

    def _generators(
        self, split: Split, index: Tensor | int
    ) -> tuple[Tensor, list[torch.Generator]]:
        sid = split_index(split)
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        m = self._num_tasks[sid]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= m):
            raise ValueError(
                f"task index out of range for split {split!r} with {m} tasks; "
                f"use indices in [0, {m})."
            )
        gens = []
        for i in index.tolist():
            state = np.random.SeedSequence((self.seed, _SOURCE_TAG, sid, i)).generate_state(
                1, np.uint64
            )
            gens.append(torch.Generator().manual_seed(int(state[0])))
        return index, gens

    @staticmethod
    def _draw_params(gen: torch.Generator, size: int) -> dict[str, float]:
        u = torch.rand(11, generator=gen, dtype=torch.float64).tolist()
        return {
            "wind_speed": 0.1 + 1.4 * u[0],
            "wind_direction": 2 * math.pi * u[1],
            "cover": 0.1 + 0.8 * u[2],
            "corr_length": (0.08 + 0.22 * u[3]) * size,
            "slope": 3.5 + 1.5 * u[4],
            "rate": 0.01 + 0.14 * u[5],
            "thickness": 0.5 + 0.4 * u[6],
            "enhancement": 0.15 * u[7],
            "sun_elevation": 15.0 + 50.0 * u[8],
            "sun_gradient": 1.0 + 3.0 * u[9],
            "sun_azimuth": 2 * math.pi * u[10],
        }

    def task_params(self, split: Split, index: Tensor | int) -> dict[str, Tensor]:
        """The regime parameters of tasks ``index`` of ``split``.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            index: Task position(s) within the split.

        Returns:
            Mapping from parameter name (``wind_speed`` [px/frame],
            ``wind_direction`` [rad], ``cover``, ``corr_length`` [px], ``slope``,
            ``rate`` [1/frame], ``thickness``, ``enhancement``,
            ``sun_elevation`` [deg], ``sun_gradient`` [deg], ``sun_azimuth`` [rad],
            the direction of the elevation gradient) to float64 tensors
            of shape ``(B,)``.
        """
        _, gens = self._generators(split, index)
        params = [self._draw_params(g, self.size) for g in gens]
        keys = (
            params[0].keys() if params else self._draw_params(torch.Generator(), self.size).keys()
        )
        return {k: torch.tensor([p[k] for p in params], dtype=torch.float64) for k in keys}

    def _simulate(self, gens: list[torch.Generator], n_frames: int) -> Tensor:
        """Frames ``(B, n_frames, size, size)`` (float32) of the tasks behind ``gens``."""
        s, g = self.size, _PAD * self.size
        params = [self._draw_params(gen, s) for gen in gens]
        b = len(gens)
        if b == 0:
            return torch.zeros(0, n_frames, s, s)
        # each generator first yields the parameters, then the noise
        noise = torch.stack([torch.randn(n_frames, g, g, generator=gen) for gen in gens])
        p = {
            k: torch.tensor([q[k] for q in params], dtype=torch.float32).view(b, 1, 1)
            for k in params[0]
        }
        kk = torch.sqrt(self._kx**2 + self._ky**2)
        spec = (1.0 + (2 * math.pi * kk * p["corr_length"]) ** 2) ** (-p["slope"] / 2) * self._keep
        norm = (spec * self._weight).sum(dim=(-2, -1), keepdim=True)  # full-plane mean of spec
        amp = torch.sqrt(spec / norm)  # unit-variance field
        fresh = torch.fft.rfft2(noise) * amp[:, None]
        rho = torch.exp(-p["rate"])
        du = p["wind_speed"] * torch.cos(p["wind_direction"])
        dv = p["wind_speed"] * torch.sin(p["wind_direction"])
        ramp = rho * torch.exp(-2j * math.pi * (self._kx * du + self._ky * dv))
        innov = torch.sqrt(1 - rho**2)
        states = [fresh[:, 0]]
        for t in range(1, n_frames):
            states.append(ramp * states[-1] + innov * fresh[:, t])
        field = torch.fft.irfft2(torch.stack(states, dim=1), s=(g, g))
        lo = (g - s) // 2
        field = field[..., lo : lo + s, lo : lo + s]
        threshold = torch.special.ndtri(1 - p["cover"])[:, None]
        opacity = torch.sigmoid((field - threshold) / _SHARPNESS)
        csi = (
            1.0
            - p["thickness"][:, None] * opacity
            + p["enhancement"][:, None] * 4.0 * opacity * (1.0 - opacity)
        )
        elev = torch.deg2rad(
            p["sun_elevation"]
            + p["sun_gradient"]
            * (torch.cos(p["sun_azimuth"]) * self._u + torch.sin(p["sun_azimuth"]) * self._v)
        )
        clear = torch.sin(elev) ** 1.15
        clear = clear / clear.mean(dim=(-2, -1), keepdim=True)
        return (csi * clear[:, None]).contiguous()

    def get_tasks(self, split: Split, index: Tensor) -> TaskBatch:
        """Tasks ``index`` of ``split`` as a :class:`~hvi.tasks.TaskBatch` (see module doc)."""
        index, gens = self._generators(split, index)
        n = self.k_shot + self.k_query
        frames = self._simulate(gens, 4 * n)  # (B, 4n, S, S)
        windows = frames.view(len(gens), n, 4, self.size, self.size)
        x, y = windows[:, :, :3].contiguous(), windows[:, :, 3:].contiguous()
        k = self.k_shot
        return TaskBatch(
            support_x=x[:, :k],
            support_y=y[:, :k],
            query_x=x[:, k:],
            query_y=y[:, k:],
            task_index=index,
            num_tasks=self.num_tasks(split),
        )
