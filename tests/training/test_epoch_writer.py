"""The epoch writer: writes in submission order off the training thread, snapshots that later updates
never reach, and a failed write's error raised in the training thread."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from mixcli.training.epoch_writer import EpochWriter, snapshot


def test_writes_run_in_order_on_another_thread_and_close_waits_for_them():
    done, threads = [], set()
    w = EpochWriter(depth=1)

    def write(i):
        time.sleep(0.01)
        threads.add(threading.current_thread().name)
        done.append(i)

    for i in range(5):
        w.submit(write, i)
    w.close()
    assert done == [0, 1, 2, 3, 4] and threads == {"mixcli-epoch-writer"}


def test_a_snapshot_keeps_the_values_of_submission_time():
    p = torch.zeros(3)
    state = {"model": {"w": p}, "rows": [torch.ones(1)], "epoch": 1}
    snap = snapshot(state)
    p.add_(5)
    assert torch.equal(snap["model"]["w"], torch.zeros(3)) and snap["epoch"] == 1
    assert snap["model"]["w"].data_ptr() != p.data_ptr()


def test_a_failed_write_is_raised_in_the_caller_and_later_writes_are_dropped():
    done = []
    w = EpochWriter()

    def fail():
        raise OSError(28, "no space left on device while writing", "ckpt.pt")

    w.submit(fail)
    w.submit(done.append, 1)
    with pytest.raises(OSError, match="no space left"):
        w.close()
    assert done == []
    w.close()  # (raised once)
