"""The process clock starts before Python imported anything of cnnlab."""

import subprocess
import sys
import time

from cnnlab.clock import process_start_time, seconds_since_start


def test_start_is_before_now_and_before_import():
    assert process_start_time() <= time.time()
    assert 0 < seconds_since_start() < 24 * 3600


def test_a_fresh_process_counts_its_own_start_up():
    code = (
        "import time; time.sleep(0.5); "
        "from cnnlab.clock import seconds_since_start as s; print(s())"
    )
    elapsed = float(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert 0.5 <= elapsed < 60
