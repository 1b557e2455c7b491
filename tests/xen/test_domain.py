"""XenDomain's suspend and resume logic, with a stand-in hypervisor.

FakeXen stands in for libxc and xenstore (xen.lowlevel.xc/xs, which need a
hypervisor) and FakeQMP for the domain's device model: they record calls and
play a guest that acknowledges (or not) and suspends (or shuts down).  The
real bindings and a real guest are exercised in the Xen lab.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from colod.xen.domain import HVM_PARAM_CALLBACK_IRQ, SHUTDOWN_SUSPEND, DomainError, XenDomain

DOMID = 7
CONTROL = f"/local/domain/{DOMID}/control/shutdown"


class FakeXen:
    """Stands in for xen.lowlevel.xc and xs: one guest, with or without PV drivers; one that
    acknowledges a suspend request but does not complete it (``completes=False``) stays on its way
    down until a test sets ``shutdown``."""

    def __init__(self, pv_drivers: bool = True, acknowledges: bool = True,
                 reason: int = SHUTDOWN_SUSPEND, completes: bool = True) -> None:
        self.pv_drivers = pv_drivers
        self.acknowledges = acknowledges
        self.completes = completes
        self.reason = reason
        self.store: dict[str, bytes] = {}
        self.shutdown = False
        self.gone = False
        self.calls: list[tuple[Any, ...]] = []

    # xc
    def hvm_get_param(self, domid: int, param: int) -> int:
        return int(self.pv_drivers) if param == HVM_PARAM_CALLBACK_IRQ else 0

    def domain_getinfo(self, first: int, count: int) -> list[dict[str, Any]]:
        if self.gone:
            return [{"domid": first + 1, "shutdown": 0, "shutdown_reason": 0}]  # the next domain's
        return [{"domid": first, "shutdown": int(self.shutdown), "shutdown_reason": self.reason}]

    def domain_shutdown(self, domid: int, reason: int) -> None:
        self.calls.append(("domain_shutdown", domid, reason))
        self.shutdown = True

    def domain_pause(self, domid: int) -> None:
        self.calls.append(("domain_pause", domid))

    def domain_resume(self, domid: int, fast: int) -> None:
        self.calls.append(("domain_resume", domid, fast))
        self.shutdown = False

    # xs
    def write(self, transaction: str, path: str, value: str) -> None:
        self.calls.append(("xs.write", path, value))
        self.store[path] = value.encode()
        if value == "suspend" and self.acknowledges:
            self.store[path] = b""
            self.shutdown = self.completes

    def read(self, transaction: str, path: str) -> bytes | None:
        return self.store.get(path)

    def resume_domain(self, domid: int) -> None:
        self.calls.append(("xs.resume_domain", domid))


class FakeQMP:
    """Stands in for the device model's QMP connection: records commands, answers at once."""

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Deferred[None]:
        self.calls.append(("qmp", command, arguments))
        return succeed(None)


class XenDomainTests(TestCase):
    def domain(self, xen: FakeXen) -> tuple[XenDomain, Clock]:
        clock = Clock()
        return XenDomain(DOMID, xen, xen, FakeQMP(xen.calls), clock, Path("/tmp/dm-state"), 1.0), clock

    def test_a_guest_with_pv_drivers_is_asked_through_xenstore(self) -> None:
        xen = FakeXen()
        domain, _ = self.domain(xen)
        self.successResultOf(Deferred.fromCoroutine(domain.suspend()))
        self.assertEqual(domain.how, "xenstore control/shutdown")
        self.assertEqual(xen.calls, [
            ("xs.write", CONTROL, "suspend"), ("qmp", "stop", None),
            ("qmp", "xen-save-devices-state", {"filename": "/tmp/dm-state", "live": True})])

    def test_a_guest_without_pv_drivers_is_suspended_by_xen(self) -> None:
        xen = FakeXen(pv_drivers=False)
        domain, _ = self.domain(xen)
        self.successResultOf(Deferred.fromCoroutine(domain.suspend()))
        self.assertEqual(domain.how, "SHUTDOWN_suspend")
        self.assertEqual(xen.calls[0], ("domain_shutdown", DOMID, SHUTDOWN_SUSPEND))

    def test_a_guest_that_never_acknowledges(self) -> None:
        """The request is withdrawn, as libxl does, and the device model is left running."""
        xen = FakeXen(acknowledges=False)
        domain, clock = self.domain(xen)
        d = Deferred.fromCoroutine(domain.suspend())
        clock.pump([0.1] * 12)
        self.assertEqual(str(self.failureResultOf(d, DomainError).value),
                         "domain 7 did not acknowledge the suspend request within 1 s")
        self.assertEqual(xen.calls, [("xs.write", CONTROL, "suspend"), ("xs.write", CONTROL, "")])

    def test_a_guest_that_shuts_down_instead(self) -> None:
        xen = FakeXen(reason=0)
        domain, _ = self.domain(xen)
        failure = self.failureResultOf(Deferred.fromCoroutine(domain.suspend()), DomainError)
        self.assertEqual(str(failure.value), "domain 7 shut down (poweroff, 0) instead of suspending")
        self.assertNotIn(("qmp", "stop", None), xen.calls)

    def test_a_guest_that_dies_before_it_acknowledges(self) -> None:
        """A guest that reboots (a triple fault) or vanishes while asked is reported at once, not at
        the deadline, and the request is withdrawn."""
        for dies, error in [(lambda xen: setattr(xen, "shutdown", True), "domain 7 shut down (reboot, 1) "
                             "instead of suspending"),
                            (lambda xen: setattr(xen, "gone", True), "domain 7 is gone")]:
            xen = FakeXen(acknowledges=False, reason=1)
            domain, clock = self.domain(xen)
            d = Deferred.fromCoroutine(domain.suspend())
            clock.advance(0.1)
            self.assertNoResult(d)
            dies(xen)
            clock.advance(0.01)
            self.assertEqual(str(self.failureResultOf(d, DomainError).value), error)
            self.assertEqual(xen.calls[-1], ("xs.write", CONTROL, ""))

    def test_paused_for_good(self) -> None:
        """A superseded primary's guest: Xen pauses its vCPUs, then its device model stops."""
        xen = FakeXen()
        domain, _ = self.domain(xen)
        self.successResultOf(Deferred.fromCoroutine(domain.pause()))
        self.assertEqual(xen.calls, [("domain_pause", DOMID), ("qmp", "stop", None)])

    def test_resume_in_libxls_order(self) -> None:
        xen = FakeXen()
        domain, _ = self.domain(xen)
        self.successResultOf(Deferred.fromCoroutine(domain.suspend()))
        del xen.calls[:]
        self.successResultOf(Deferred.fromCoroutine(domain.resume()))
        self.assertEqual(xen.calls, [("qmp", "cont", None), ("domain_resume", DOMID, 1),
                                     ("xs.resume_domain", DOMID)])

    def test_a_guest_still_on_its_way_down_finishes_suspending_before_it_resumes(self) -> None:
        """A suspend that timed out after the guest took it up: a fast resume now would land in
        the middle of the guest's own suspend path, so resume waits for the guest to get there."""
        xen = FakeXen(completes=False)
        domain, clock = self.domain(xen)
        suspending = Deferred.fromCoroutine(domain.suspend())
        clock.pump([0.1] * 12)
        self.assertEqual(str(self.failureResultOf(suspending, DomainError).value),
                         "domain 7 did not suspend within 1 s")
        resuming = Deferred.fromCoroutine(domain.resume())
        clock.pump([0.1] * 3)
        self.assertNoResult(resuming)
        self.assertNotIn(("domain_resume", DOMID, 1), xen.calls)
        xen.shutdown = True  # the guest gets there
        clock.advance(0.1)
        self.successResultOf(resuming)
        self.assertEqual(xen.calls[-3:], [("qmp", "cont", None), ("domain_resume", DOMID, 1),
                                          ("xs.resume_domain", DOMID)])

    def test_a_guest_that_never_went_down_is_not_resumed(self) -> None:
        """The request was withdrawn unanswered: the guest runs, only its device model is let go."""
        xen = FakeXen(acknowledges=False)
        domain, clock = self.domain(xen)
        suspending = Deferred.fromCoroutine(domain.suspend())
        clock.pump([0.1] * 12)
        self.failureResultOf(suspending, DomainError)
        del xen.calls[:]
        self.successResultOf(Deferred.fromCoroutine(domain.resume()))
        self.assertEqual(xen.calls, [("qmp", "cont", None)])
