"""The random fault schedules' script (python -m tests.schedules) as CI runs it: a handful of schedules on a
real pair under the etcd policy, with no violation, and the script's own check that it catches two running
guests (heartbeat-only under a cut link) and says so in its counts and exit status."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

#: Seconds one schedule may take, start and settling included, on a loaded machine.
PER_SCHEDULE = 120
#: Where ``-m tests.schedules`` is found.
ROOT = Path(__file__).resolve().parents[2]


def schedules(*args: str, count: int) -> tuple[int, str]:
    """Run ``count`` schedules with ``args``; the exit status and what the script printed."""
    command = [sys.executable, "-m", "tests.schedules", "-n", str(count), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=PER_SCHEDULE * count,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout + done.stderr


def counts(output: str) -> dict[str, int]:
    return {name: int(n) for name, n in re.findall(r"^  ([a-z -]+): (\d+)$", output, re.MULTILINE)}


class FaultScheduleTests(unittest.TestCase):
    def test_a_handful_of_schedules_violate_nothing(self) -> None:
        status, output = schedules("--seed", "2026", count=3)
        self.assertEqual(status, 0, output)
        found = counts(output)
        self.assertEqual((found["schedules"], found["violations"], found["rig failures"]), (3, 0, 0), output)
        judged = re.findall(r"^# +\d+ .*: runs (?:primary|secondary);.* ok \[", output, re.MULTILINE)
        self.assertEqual(len(judged), 3, output)

    def test_two_running_guests_are_counted(self) -> None:
        status, output = schedules("--policy", "heartbeat-only", "--faults", "link", count=1)
        self.assertEqual(status, 1, output)
        found = counts(output)
        self.assertGreaterEqual(found["violations"], 1, output)
        self.assertEqual(found["schedules with a violation"], 1, output)
        self.assertRegex(output, r"VIOLATION: both guests ran at \d+ of \d+ looks")
