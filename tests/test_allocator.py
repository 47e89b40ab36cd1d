"""hvi.tune_allocator: glibc keeps freed memory, so the next step does not refault it."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

import hvi


def _has_glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version
    except (AttributeError, OSError):
        return False
    return sys.platform.startswith("linux")


glibc_only = pytest.mark.skipif(not _has_glibc(), reason="mallopt thresholds are glibc's")

# A worker thread, 16 times over, allocates thirty 1 MiB tensors and one of
# 16 MiB (like a forward pass's activations), then frees them last-in first-out
# (like a backward pass). Prints the process's minor page faults in rounds 2-16
# (the first round faults its pages in however the allocator is set).
_CHURN = """
import resource, sys, threading, torch
if sys.argv[1] == "tuned":
    import hvi
    assert hvi.tune_allocator()
faults = []
def work():
    for _ in range(16):
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        live = [torch.empty(1 << 18).fill_(1.0) for _ in range(30)] + [torch.empty(1 << 22).fill_(1.0)]
        while live:
            live.pop()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(faults[-1] - faults[1])
"""
_PAGES_PER_ROUND = (30 + 16) * (1 << 20) // 4096  # 11,776 pages of 4 KiB


def _faults(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@glibc_only
def test_tuned_allocator_stops_refaulting_freed_memory():
    default, tuned = _faults("default"), _faults("tuned")
    # glibc's default gives the memory back to the kernel round after round and
    # faults it in again; tuned, rounds 2-16 reuse the pages of round 1.
    # (Measured here: 37,863 and 8,092.)
    assert default > 2 * _PAGES_PER_ROUND, default
    assert tuned < _PAGES_PER_ROUND, tuned


@glibc_only
def test_tune_allocator_applies_on_glibc():
    # In a child process: mallopt's settings cannot be read back, so the test session's own malloc
    # could not be restored to glibc's defaults afterwards.
    code = "import hvi; print(hvi.tune_allocator(), hvi.tune_allocator(trim_threshold_mb=64, mmap_threshold_mb=16))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def test_in_process_calls_leave_malloc_alone(mallopt_calls, runner, fresh_store, tmp_path):
    """Under the test session's stub (tests/conftest.py) an in-process hvi fit records glibc's settings
    (M_MMAP_THRESHOLD = -3 at 32 MiB, then M_TRIM_THRESHOLD = -1 at 256 MiB) instead of applying them."""
    from hvi.cli.main import cli

    assert hvi.tune_allocator(trim_threshold_mb=64, mmap_threshold_mb=16)
    assert mallopt_calls == [(-3, 16 << 20), (-1, 64 << 20)]
    del mallopt_calls[:]
    res = runner.invoke(cli, ["fit", "--model", "mlp", "--steps", "1", "--task-batch", "2", "--inner-steps", "1",
                              "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert mallopt_calls == [(-3, 32 << 20), (-1, 256 << 20)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mmap_threshold_mb": 64}, "mmap_threshold_mb must be in 1..32 (glibc's limit), got 64"),
        ({"mmap_threshold_mb": 0}, "mmap_threshold_mb must be in 1..32 (glibc's limit), got 0"),
        ({"trim_threshold_mb": 4096}, "trim_threshold_mb must be in 1..2047 (mallopt takes a C int of bytes)"),
    ],
)
def test_tune_allocator_bad_thresholds(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        hvi.tune_allocator(**kwargs)
