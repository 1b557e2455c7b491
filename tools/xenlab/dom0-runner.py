#!/usr/bin/python3
"""xenlab-runner: runs in the lab's dom0 the commands the host drops into the spool share.

The spool is a 9p share, read-write, that QEMU exports from the host's run
folder; dom0-init mounts it at /opt/xenlab-spool and starts this runner
(`xenlab-runner SPOOL`).  The protocol, host side in colod/testing/xenlab.py:

- The host writes a bash script to ``cmd/<id>.sh`` (a temporary name first,
  then renamed, so the runner never sees half a script).  Its first line is
  ``# xenlab-timeout=<seconds>``.
- The runner claims it by renaming it to ``run/<id>.sh`` and runs it with
  bash in a session of its own, stdin from /dev/null, stdout and stderr to
  ``out/<id>.out``.  Commands run side by side: a long one does not hold
  up the next.
- When the script exits, the runner writes ``out/<id>.rc`` (JSON:
  ``status``, ``timed_out``, ``seconds``), again through a temporary name and
  a rename: when it exists, the output is complete.  ``status`` is bash's
  exit status, 128+N for a signal N, and 124 when the runner killed the
  command's session at its deadline (SIGTERM, then SIGKILL 5 s later).

A process a command leaves behind (a daemon started with ``setsid ... &``)
keeps running; the command is done when its bash exits.  The runner writes
``runner.ready`` when it starts; its own errors go to stderr, which
dom0-init sends to ``runner.log`` in the spool.
"""

import json
import os
import signal
import subprocess
import sys
import time

# How often the runner looks at the spool: often while commands come and go,
# seldom when idle (every look costs dom0, a PV guest under TCG, a few 9p round
# trips and syscalls, each of which goes through Xen).
BUSY_POLL = 0.05
IDLE_POLL = 0.25
BUSY_FOR = 3.0
KILL_GRACE = 5.0
DEFAULT_TIMEOUT = 600.0
ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    # colod from the host's work tree (9p, read-only), with the bytecode the host compiled there.
    "PYTHONPATH": "/opt/colod-src",
    "COLOD_VENV": "/opt/colod-venv",
}


class Job:
    def __init__(self, job_id, process, timeout):
        self.id = job_id
        self.process = process
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.timed_out = False
        self.kill_at = None


def write_atomically(path, text):
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def timeout_of(script):
    with open(script) as f:
        first = f.readline()
    if first.startswith("# xenlab-timeout="):
        try:
            return float(first.split("=", 1)[1])
        except ValueError:
            pass
    return DEFAULT_TIMEOUT


def start(spool, name):
    job_id = name[: -len(".sh")]
    script = os.path.join(spool, "run", name)
    os.replace(os.path.join(spool, "cmd", name), script)
    with open(os.path.join(spool, "out", job_id + ".out"), "wb") as out:
        process = subprocess.Popen(
            ["/bin/bash", script], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd="/root", env=ENVIRONMENT, start_new_session=True,
        )
    return Job(job_id, process, timeout_of(script))


def finish(spool, job, returncode):
    status = 124 if job.timed_out else (returncode if returncode >= 0 else 128 - returncode)
    result = {"status": status, "timed_out": job.timed_out,
              "seconds": round(time.monotonic() - job.started, 3)}
    write_atomically(os.path.join(spool, "out", job.id + ".rc"), json.dumps(result) + "\n")


def signal_session(job, signum):
    try:
        os.killpg(job.process.pid, signum)
    except ProcessLookupError:
        pass


def main():
    spool = sys.argv[1]
    for sub in ("cmd", "run", "out"):
        os.makedirs(os.path.join(spool, sub), exist_ok=True)
    jobs = {}
    busy_until = 0.0
    write_atomically(os.path.join(spool, "runner.ready"), json.dumps({"pid": os.getpid()}) + "\n")
    while True:
        try:
            names = sorted(n for n in os.listdir(os.path.join(spool, "cmd")) if n.endswith(".sh"))
        except OSError as e:
            print(f"xenlab-runner: cannot list the spool: {e}", file=sys.stderr, flush=True)
            names = []
        for name in names:
            if name[:-3] in jobs:
                continue
            try:
                job = start(spool, name)
            except OSError as e:
                print(f"xenlab-runner: cannot start {name}: {e}", file=sys.stderr, flush=True)
                continue
            jobs[job.id] = job
            busy_until = time.monotonic() + BUSY_FOR
        now = time.monotonic()
        for job in list(jobs.values()):
            returncode = job.process.poll()
            if returncode is not None:
                try:
                    finish(spool, job, returncode)
                except OSError as e:
                    print(f"xenlab-runner: cannot write {job.id}'s result: {e}", file=sys.stderr, flush=True)
                del jobs[job.id]
                busy_until = now + BUSY_FOR
            elif not job.timed_out and now > job.deadline:
                job.timed_out = True
                job.kill_at = now + KILL_GRACE
                signal_session(job, signal.SIGTERM)
            elif job.timed_out and now > job.kill_at:
                signal_session(job, signal.SIGKILL)
                job.kill_at = now + KILL_GRACE
        time.sleep(BUSY_POLL if now < busy_until else IDLE_POLL)


if __name__ == "__main__":
    main()
