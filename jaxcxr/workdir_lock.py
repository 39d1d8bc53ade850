"""One run per workdir: an exclusive lock on WORKDIR/.lock while a run writes into it.

  with workdir_lock.hold(workdir):
    ...  # train, evaluate, write reports

A second run on the same workdir stops at once with WorkdirBusyError (a UserError: one line, exit 2)
naming the process that holds it (pid, host, start time and command, read from the lock file).

The lock is `fcntl.flock` on the file, not the file's existence: the kernel drops it when the holding
process dies, however it dies (SIGKILL, OOM, a node reboot), so a lock left by a killed run is simply
taken by the next one; the stale holder line in the file is overwritten. flock is advisory and local to
one machine; on NFS, Linux emulates it with POSIX byte-range locks, which also end with the process.
Processes forked while the lock is held (data-loader workers) share it until they exit too.

In multi-process runs only process 0 takes the lock (`process_index` != 0 holds nothing): the processes
of one run share the workdir by design.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys

from jaxcxr import errors

LOCK_FILE = ".lock"


class WorkdirBusyError(errors.UserError):
  """Another live process holds the workdir."""


def lock_path(workdir):
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), LOCK_FILE)


def read_holder(workdir):
  """The holder record written by the last process that took the lock ({} if none or unreadable)."""
  try:
    with open(lock_path(workdir)) as f:
      return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


def _describe(holder):
  if not holder:
    return "another process (no holder recorded)"
  parts = [f"pid {holder.get('pid')} on {holder.get('host')}"]
  if holder.get("started"):
    parts.append(f"since {holder['started']}")
  if holder.get("command"):
    parts.append(f"running {holder['command']!r}")
  return ", ".join(parts)


@contextlib.contextmanager
def hold(workdir, *, process_index=0):
  """Holds the exclusive lock on `workdir` (created if needed) for the body of the `with`.

  Args:
    workdir: the run folder.
    process_index: this process's index in a multi-process run (jax.process_index()); only 0 locks.

  Raises:
    WorkdirBusyError: a live process already holds the lock; nothing was changed.
  """
  if process_index != 0:
    yield None
    return
  path = lock_path(workdir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # O_RDWR without O_TRUNC: the current holder's record must survive our failed attempt.
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = read_holder(workdir)
      raise WorkdirBusyError(f"{os.path.dirname(path)} is in use by {_describe(holder)}; wait for it to finish, "
                             f"stop it, or use another --workdir.") from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)
    try:
      yield holder
    finally:
      os.ftruncate(fd, 0)  # Released: no holder (the file stays; removing it would race a new holder).
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
