"""colod's log controls on a publisher of their own: the level, the JSON lines and their fields, the count of
engine errors, and the publisher given back as it was."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel, LogPublisher, eventsFromJSONLogFile

from colod.config import LogConfig
from colod.logs import LogControl
from tests.rig import ScratchTestCase


class LogControlTests(ScratchTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.publisher = LogPublisher()
        self.seen: list[dict[str, Any]] = []
        self.publisher.addObserver(self.seen.append)  # stands in for twistd's text log
        self.json = self.workdir / "colod.json"
        fields = {"lab": {"role": "primary", "epoch": 2, "checkpoint": 41}}
        self.logs = LogControl(LogConfig(level="info", json=str(self.json)),
                               lambda name: fields.get(name, {}), self.publisher)
        self.assertIsNone(self.logs.open())
        self.addCleanup(self.logs.close)
        self.engine = Logger(namespace="colod.engine.primary.PrimaryEngine", observer=self.publisher)

    def texts(self) -> list[str]:
        return [event["log_format"] for event in self.seen]

    def test_level_filters_every_observer_and_changes_while_running(self) -> None:
        self.engine.debug("hidden")
        self.engine.info("shown {domain}", domain="lab")
        self.assertEqual(self.logs.set_level("debug"), "info")
        self.engine.debug("now shown")
        self.assertEqual(self.logs.set_level(None), "debug")
        self.assertEqual(self.texts(), ["shown {domain}", "now shown"])
        with self.assertRaisesRegex(ValueError, "no log level 'loud'; the levels are debug, info"):
            self.logs.set_level("loud")

    def test_the_http_clients_chatter_is_left_out(self) -> None:
        """The etcd calls' HTTP client says nothing per connection; what else it says, and others' factory
        lines, are kept."""
        client = Logger(namespace="twisted.web.client._HTTP11ClientFactory", observer=self.publisher)
        client.info("Starting factory {factory!r}", factory="a pool's")
        client.info("Stopping factory {factory!r}", factory="a pool's")
        client.warn("something else")
        Logger(namespace="twisted.internet.protocol.Factory", observer=self.publisher).info(
            "Starting factory {factory!r}", factory="a server's")
        self.assertEqual(self.texts(), ["something else", "Starting factory {factory!r}"])
        with open(self.json) as lines:
            self.assertEqual([event["log_format"] for event in eventsFromJSONLogFile(lines)],
                             ["something else", "Starting factory {factory!r}"])

    def test_json_lines_carry_the_domains_fields(self) -> None:
        """An event about a domain gets its role, epoch and checkpoint; its own fields win."""
        self.engine.warn("domain {domain}: running UNPROTECTED", domain="lab")
        self.engine.info("domain {domain}: as {role}", domain="lab", role="secondary")
        self.engine.info("no domain here")
        self.engine.debug("filtered out of the JSON lines too", domain="lab")
        self.logs.close()
        with open(self.json) as f:
            events = list(eventsFromJSONLogFile(f))
        self.assertEqual([(e.get("role"), e.get("epoch"), e.get("checkpoint")) for e in events],
                         [("primary", 2, 41), ("secondary", 2, 41), (None, None, None)])
        self.assertEqual(events[0]["log_level"], LogLevel.warn)

    def test_engine_errors_are_counted_at_any_level(self) -> None:
        self.logs.set_level("critical")
        self.engine.error("domain {domain}: replication ended", domain="lab")
        self.engine.critical("domain {domain}: gone", domain="lab")
        self.engine.warn("domain {domain}: only a warning", domain="lab")
        Logger(namespace="colod.service.DomainService", observer=self.publisher).error(
            "domain {domain}: not an engine's", domain="lab")
        self.assertEqual(dict(self.logs.errors), {"lab": 2})
        self.assertEqual(self.texts(), ["domain {domain}: gone"])

    def test_close_gives_the_observers_back(self) -> None:
        self.logs.close()
        self.engine.debug("seen again, unfiltered")
        self.assertEqual(self.texts(), ["seen again, unfiltered"])
        self.assertEqual(self.publisher._observers, [self.seen.append])

    def test_an_unusable_json_file_is_one_line(self) -> None:
        logs = LogControl(LogConfig(json=str(self.workdir / "missing" / "colod.json")), lambda name: {},
                          LogPublisher())
        self.assertRegex(logs.open() or "",
                         r"^log\.json: cannot open .*/missing/colod\.json: No such file or directory$")
