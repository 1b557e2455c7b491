# -*- test-case-name: tests.test_logs -*-
"""colod's log while it runs: its level, JSON lines beside the text log, and the errors its engines log.

twistd writes the text log; colod puts every observer twistd gave the
global log publisher behind one level filter (``[log] level``, changed by
``colodctl log-level`` while colod runs), and adds, behind the same filter,
a JSON-lines file (``[log] json``: twisted.logger's JSON format, one event a
line, each after an RS byte as RFC 7464 has it) whose events about a domain
carry its ``role``, ``epoch`` and ``checkpoint`` number as fields.

What the engines log at the default level is one event per change of state
and per error, never one per checkpoint: a day of checkpoints every 20 ms
is four million of them.  The errors they log are counted here, whatever
the level, for the metrics' replication errors (each is logged once, as it
ends or stops replication: colod.engine).  Twisted's HTTP client, which
carries the etcd policy's calls, says "Starting factory" and "Stopping
factory" for each of its connections, several a second: that chatter is
left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
    jsonFileLogObserver,
)
from zope.interface import implementer

from colod.config import LOG_LEVELS, LogConfig

#: Where the engines log from (their events' namespaces begin so).
ENGINE_NAMESPACE = "colod.engine."
#: Where Twisted's HTTP client logs from, and what of it is chatter.
HTTP_CLIENT_NAMESPACE = "twisted.web.client."
HTTP_CLIENT_CHATTER = ("Starting factory ", "Stopping factory ")


class LogControl:
    """Holds the level of colod's log observers, its JSON-lines file and the count of engine errors.

    ``fields(domain)`` gives the fields a domain's events get in the JSON lines.
    """

    def __init__(self, config: LogConfig, fields: Callable[[str], dict[str, Any]],
                 publisher: LogPublisher = globalLogPublisher) -> None:
        self._config = config
        self._fields = fields
        self._publisher = publisher
        self._level = LogLevelFilterPredicate(LogLevel.levelWithName(config.level))
        self._errors = _ErrorCounter()
        #: Error events logged by the engines, by domain, since the start.
        self.errors = self._errors.counts
        self._json: IO[str] | None = None
        #: What this put on the publisher, and the observers it put behind the filter there.
        self._added: list[ILogObserver] = []
        self._wrapped: list[ILogObserver] = []

    @property
    def level(self) -> str:
        return self._level.defaultLogLevel.name

    def set_level(self, name: str | None) -> str:
        """Log from level ``name`` up (None: leave it); returns the level before.  @raise ValueError."""
        was = self.level
        if name is not None:
            if name not in LOG_LEVELS:
                raise ValueError(f"no log level {name!r}; the levels are " + ", ".join(LOG_LEVELS))
            self._level.defaultLogLevel = LogLevel.levelWithName(name)
            self._level.clearLogLevels()
        return was

    def open(self) -> str | None:
        """Take the publisher's observers behind the level, open the JSON lines; returns why not, or None."""
        if self._config.json is not None:
            try:
                self._json = open(self._config.json, "a", encoding="utf-8")
            except OSError as e:
                return f"log.json: cannot open {self._config.json}: {e.strerror}"
        # The publisher's own list: twisted.logger has no public way to put a filter before them.
        self._wrapped = list(self._publisher._observers)
        for observer in self._wrapped:
            self._add(FilteringLogObserver(observer, [_http_client_chatter, self._level]))
            self._publisher.removeObserver(observer)
        if self._json is not None:
            self._add(FilteringLogObserver(_Enriching(jsonFileLogObserver(self._json), self._fields),
                                           [_http_client_chatter, self._level]))
        self._add(self._errors)
        return None

    def close(self) -> None:
        """Give the publisher its observers back as they were; close the JSON lines."""
        for observer in self._added:
            self._publisher.removeObserver(observer)
        for observer in self._wrapped:
            self._publisher.addObserver(observer)
        self._added, self._wrapped = [], []
        if self._json is not None:
            self._json.close()
            self._json = None

    def _add(self, observer: ILogObserver) -> None:
        self._added.append(observer)
        self._publisher.addObserver(observer)



@implementer(ILogFilterPredicate)
def _http_client_chatter(event: dict[str, Any]) -> PredicateResult:
    """No to the HTTP client's line per connection (HTTP_CLIENT_CHATTER); maybe to anything else."""
    chatter = (str(event.get("log_namespace", "")).startswith(HTTP_CLIENT_NAMESPACE)
               and str(event.get("log_format", "")).startswith(HTTP_CLIENT_CHATTER))
    return PredicateResult.no if chatter else PredicateResult.maybe


@implementer(ILogObserver)
class _ErrorCounter:
    """Counts, by domain, the error events the engines log."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, event: dict[str, Any]) -> None:
        if (event.get("log_level", LogLevel.info) >= LogLevel.error and "domain" in event
                and str(event.get("log_namespace", "")).startswith(ENGINE_NAMESPACE)):
            self.counts[str(event["domain"])] += 1


@implementer(ILogObserver)
class _Enriching:
    """Gives an event about a domain that domain's fields (those the event has win), then passes it on."""

    def __init__(self, observer: ILogObserver, fields: Callable[[str], dict[str, Any]]) -> None:
        self._observer = observer
        self._fields = fields

    def __call__(self, event: dict[str, Any]) -> None:
        domain = event.get("domain")
        if isinstance(domain, str):
            event = {**self._fields(domain), **event}
        self._observer(event)
