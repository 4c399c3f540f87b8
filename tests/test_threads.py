"""The thread policy: one torch thread per core that other work leaves idle, measured now."""

import os
import subprocess
import sys

import pytest

from tinystories.utils import busy_cores, choose_threads, usable_cores


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or usable_cores() < 2,
                    reason="reads /proc/stat and pins processes to two cores: Linux with 2 or more cores")
def test_a_busy_core_is_seen_at_once_and_left_alone() -> None:
    """On two of this machine's cores, one kept busy by a spinning process: seen within the
    window, and left to it (one thread), on a box of any size."""
    cores = set(sorted(os.sched_getaffinity(0))[:2])
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    mine = os.sched_getaffinity(0)  # (this thread's: the measure below runs on it)
    try:
        os.sched_setaffinity(spin.pid, {min(cores)})
        os.sched_setaffinity(0, cores)
        assert usable_cores() == 2
        assert busy_cores(0.5) >= 0.6  # the spinning process, not a lagging average
        assert choose_threads() == 1
    finally:
        os.sched_setaffinity(0, mine)
        spin.kill()
        spin.wait()
    assert choose_threads(3) == 3  # asked for: given
