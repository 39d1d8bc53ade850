"""jaxcxr.workdir_lock: one holder at a time, the holder named, a killed holder's lock taken over."""

import os
import signal
import subprocess
import sys
import time

import pytest

from jaxcxr import errors
from jaxcxr import workdir_lock

# A child that takes the lock, says so on stdout, then sleeps until killed.
HOLDER = """
import sys, time
from jaxcxr import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def _start_holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], stdout=subprocess.PIPE, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_second_holder_fails_at_once_naming_the_first(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir) as holder:
    assert holder["pid"] == os.getpid()
    assert workdir_lock.read_holder(workdir)["pid"] == os.getpid()
    start = time.monotonic()
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {os.getpid()} on ") as e:
      with workdir_lock.hold(workdir):
        pytest.fail("a second holder got the lock")
    assert time.monotonic() - start < 5
    assert isinstance(e.value, errors.UserError) and "\n" not in str(e.value)
    # The failed attempt left the holder's record alone.
    assert workdir_lock.read_holder(workdir)["pid"] == os.getpid()
  assert workdir_lock.read_holder(workdir) == {}  # Released: no holder recorded.
  with workdir_lock.hold(workdir):  # ... and free again.
    pass


def test_only_process_zero_locks(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir):
    with workdir_lock.hold(workdir, process_index=1) as holder:
      assert holder is None


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start_holder(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {proc.pid} on "):
      with workdir_lock.hold(workdir):
        pass
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert workdir_lock.read_holder(workdir)["pid"] == proc.pid  # Its record is stale, not a lock.
  with workdir_lock.hold(workdir) as holder:
    assert holder["pid"] == os.getpid()
    assert workdir_lock.read_holder(workdir)["pid"] == os.getpid()
