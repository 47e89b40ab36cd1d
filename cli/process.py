"""The process-wide settings of a CLI run (``hvi fit``, ``hvi evaluate``): threads and the allocator.

They belong to the program, not to the library: :func:`hvi.fit` and
:func:`hvi.load_run` change neither, and a Python caller sets them itself
(``torch.set_num_threads``, :func:`hvi.tune_allocator`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["configure_process"]


def configure_process(cfg: Mapping[str, Any], device: torch.device) -> None:
    """Process-wide settings of a run: its threads (``cfg["threads"]``, when set) and, on CPU,
    glibc's allocator thresholds (:func:`hvi.allocator.tune_allocator`: without them a meta-step refaults
    its activations' pages from the kernel on every inner step).

    ``threads`` N means N task workers (:func:`hvi.parallel.set_task_workers`: each adapts a chunk of the
    task batch with single-threaded kernels) and one intra-op thread for torch: the main thread's share
    of a step is small kernels, which intra-op threads slow down and spin-wait on (docs/performance.md).
    """
    from hvi import allocator, parallel

    if cfg.get("threads"):
        torch.set_num_threads(1)
        parallel.set_task_workers(cfg["threads"])
    if device.type == "cpu":
        allocator.tune_allocator()
