# -*- test-case-name: tests.control.test_colodctl -*-
"""A domain's status as the control socket gives it: what the engine published, and what only it knows now.

The engine publishes its status (colod.engine.status: status.json) when
something that matters changes; the control socket adds what moves between
two of those and only the live daemon knows: the step under way, the age of
the last checkpoint, the epoch, the link's round trip and the pause histogram
since the start; and, asked of QEMU, the devices' health.  Every key is
always there, null when not known (the engine is not built before QEMU is
reached).
"""

from __future__ import annotations

from typing import Any, Protocol

from colod.config import Config, DomainConfig
from colod.engine.core import EngineCore
from colod.engine.primary import PrimaryEngine
from colod.histogram import Histogram

#: The state of a domain whose QEMU colod has not reached yet.
REACHING_QEMU = "reaching_qemu"


class Domain(Protocol):
    """A protected domain, as the control socket and the metrics see it (colod.service.DomainService)."""

    @property
    def domain(self) -> DomainConfig: ...

    @property
    def engine(self) -> EngineCore[Any, Any] | None: ...

    @property
    def qemu_version(self) -> str | None: ...


def engine_status(domain: Domain, config: Config, now: float) -> dict[str, Any]:
    """``domain``'s status at ``now`` (the clock's time), without the devices (which take QMP calls)."""
    engine = domain.engine
    status: dict[str, Any] = {
        "domain": domain.domain.name, "node": config.node_name, "role": config.role.value,
        "state": REACHING_QEMU, "state_since": None, "step": None, "protected": False,
        "checkpoints_paused": False, "epoch": None, "failed_over": False, "error": None,
        "checkpoint": {"number": 0, "at": None, "age_s": None, "by_trigger": {}, "bytes": None,
                       "pages": None},
        "pause": {"last_ms": None, "p50_ms": None, "p99_ms": None, "count": 0, "sum_s": 0.0, "buckets": []},
        "peer": {"node": config.peer.node_name, "linked": False, "address": None, "round_trip_ms": None},
        "guest": None, "qemu": domain.qemu_version, "devices": [], "status_file": None,
    }
    if engine is None:
        return status
    published, file = engine.status_file.last, engine.status_file
    last = engine.pauses.recent[-1] if engine.pauses.recent else None
    at = file.last_checkpoint
    link = engine.link
    round_trip = link.round_trip() if link is not None else None
    triggers = dict(engine.triggers) if isinstance(engine, PrimaryEngine) else {"primary": engine.checkpoints}
    status.update({
        "role": engine.role.value, "state": published.get("state", engine.state.value),
        "state_since": file.since, "step": engine.state.value, "protected": engine.protected,
        "checkpoints_paused": published.get("checkpoints_paused", False), "epoch": engine.epoch,
        "failed_over": published.get("failed_over", False), "error": engine.error,
        "checkpoint": {"number": engine.checkpoints, "at": at, "age_s": None if at is None else now - at,
                       "by_trigger": triggers, "bytes": last and last.bytes, "pages": last and last.pages},
        "pause": {"last_ms": published.get("last_pause_ms"), "p50_ms": published.get("pause_p50_ms"),
                  "p99_ms": published.get("pause_p99_ms"), "count": engine.pauses.seconds.count,
                  "sum_s": engine.pauses.seconds.sum, "buckets": buckets(engine.pauses.seconds)},
        "peer": {"node": config.peer.node_name, "linked": link is not None,
                 "address": link.peer_address if link is not None else None,
                 "round_trip_ms": None if round_trip is None else round(round_trip * 1000, 3)},
        "guest": engine.guest.description, "status_file": str(file.path),
    })
    return status


async def device_health(domain: Domain) -> list[dict[str, Any]]:
    """Each device's health, as QEMU reports it (QMP calls, each with the devices' deadline; never fails)."""
    if domain.engine is None:
        return []
    return [{"name": health.name, "healthy": health.healthy, "detail": health.detail}
            for health in await domain.engine.devices.health()]


def buckets(histogram: Histogram) -> list[list[Any]]:
    """A histogram's cumulative buckets as JSON can carry them: ``[le, count]``, the last ``["+Inf", n]``."""
    return [[bound if bound != float("inf") else "+Inf", count] for bound, count in histogram.cumulative()]
