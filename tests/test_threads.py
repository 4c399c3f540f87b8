"""The thread policy: one torch thread per core that other work leaves idle, measured now."""

import subprocess
import sys

import pytest

from tinystories.utils import busy_cores, choose_threads, usable_cores


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_busy_core_is_seen_at_once_and_left_alone() -> None:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cores(0.5) >= 0.6  # the spinning process, not a lagging average
        if usable_cores() == 2:
            assert choose_threads() == 1
    finally:
        spin.kill()
        spin.wait()
    assert choose_threads(3) == 3  # asked for: given
