# -*- test-case-name: tests.failover.test_etcd -*-
"""An etcd v3 client over etcd's JSON gateway, on Twisted's own HTTP client.

etcd (3.4) serves its v3 API as HTTP/JSON beside gRPC, under ``/v3/...``: the
same leases and transactions, with keys and values in base64 and 64-bit
numbers as strings.  So colod needs no gRPC stack and no new dependency, and
nothing blocks the reactor.  Only what failover needs is here: leases (grant,
keep alive, time to live, revoke), reading a key and transactions (nested ones
included, which etcd has had since 3.3).

Each call has one deadline.  A cluster's members are tried in turn, starting
with the last one that answered: one that cannot be reached, does not answer
within its share of what is left of the deadline, or says it cannot serve
(gRPC's UNAVAILABLE: no leader, stopping) gives way to the next.  Past the
deadline the call fails with EtcdUnavailable; a member's answer that is an
error fails it with EtcdError, whose message is etcd's.  A request that timed
out may still have been applied: callers make their writes safe to repeat
(colod.failover.ownership does).

Over https (the members' URLs say), a member must show a certificate of
``[tls]``'s CA naming the URL's host, and this node shows its own
certificate: an etcd run with ``--client-cert-auth`` and that CA lets in
only the site's nodes.  A TLS failure is a member that did not answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet import defer, error, ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    PotentialDataLoss,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from colod.config import TLSConfig

#: Seconds a call may take, all members tried included.
DEFAULT_TIMEOUT = 2.0
#: gRPC's status code UNAVAILABLE: this member cannot serve now (no leader, shutting down); another may.
UNAVAILABLE = 14

#: One compare or request of a transaction, as the gateway's JSON.
Op = dict[str, Any]


class EtcdUnavailable(Exception):
    """No member of the cluster answered within the call's deadline."""


class EtcdError(Exception):
    """A member answered with an error (``code`` is gRPC's status code, the message etcd's)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class Lease:
    """A granted lease: its ID and the TTL etcd gave it (which may exceed the one asked for)."""

    id: int
    ttl: int


@attrs.frozen
class KeyValue:
    """One key as etcd stores it; ``lease`` is 0 for a key attached to no lease."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(key=_decode(kv["key"]), value=_decode(kv.get("value", "")),
                   create_revision=int(kv.get("create_revision", 0)),
                   mod_revision=int(kv.get("mod_revision", 0)), lease=int(kv.get("lease", 0)))


@attrs.frozen
class TxnResult:
    """A transaction's outcome: whether its compares held, and the responses of the branch taken."""

    succeeded: bool
    responses: list[dict[str, Any]]

    @classmethod
    def from_json(cls, answer: dict[str, Any]) -> TxnResult:
        return cls(succeeded=bool(answer.get("succeeded", False)), responses=answer.get("responses", []))

    def innermost(self) -> TxnResult:
        """The deepest transaction taken: while the branch taken is one nested transaction, that one."""
        if len(self.responses) == 1 and "response_txn" in self.responses[0]:
            return TxnResult.from_json(self.responses[0]["response_txn"]).innermost()
        return self

    def ranges(self) -> list[KeyValue | None]:
        """The key each range request of the branch read (its first), or None where it found none."""
        return [KeyValue.from_json(kvs[0]) if (kvs := response["response_range"].get("kvs")) else None
                for response in self.responses if "response_range" in response]


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode(text: str) -> bytes:
    return base64.b64decode(text)


def created(key: bytes, revision: int = 0) -> Op:
    """Compare: the key's create revision is ``revision`` (0: the key does not exist)."""
    return {"key": _encode(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def modified(key: bytes, revision: int) -> Op:
    """Compare: the key was last modified at ``revision`` (it is still that very version)."""
    return {"key": _encode(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def value_is(key: bytes, value: bytes) -> Op:
    """Compare: the key exists and holds exactly ``value``."""
    return {"key": _encode(key), "target": "VALUE", "result": "EQUAL", "value": _encode(value)}


def put(key: bytes, value: bytes, lease: int = 0) -> Op:
    """Request: set the key, attached to ``lease`` (0: to none)."""
    return {"request_put": {"key": _encode(key), "value": _encode(value), "lease": str(lease)}}


def get(key: bytes) -> Op:
    """Request: read the key."""
    return {"request_range": {"key": _encode(key)}}


def delete(key: bytes) -> Op:
    """Request: delete the key."""
    return {"request_delete_range": {"key": _encode(key)}}


def nested(compare: Sequence[Op], success: Sequence[Op], failure: Sequence[Op]) -> Op:
    """Request: a transaction inside a transaction's branch, applied in the same revision."""
    return {"request_txn": {"compare": list(compare), "success": list(success), "failure": list(failure)}}


#: What a member that never answered looks like: it could not be reached, or the exchange broke or timed out.
_NO_ANSWER = (error.ConnectError, error.ConnectingCancelledError, error.ConnectionLost, ResponseFailed,
              RequestGenerationFailed, RequestTransmissionFailed, defer.TimeoutError, defer.CancelledError,
              SSL.Error)


class _Unserving(Exception):
    """A member answered that it cannot serve now; the next member may."""


@implementer(IPolicyForHTTPS)
class _SiteTLS:
    """https to etcd: its certificate must be the CA's and name the URL's host; this node's is shown."""

    def __init__(self, tls: TLSConfig) -> None:
        """@raise OSError, ssl.SSL.Error: a file cannot be read or parsed (the configuration checked them)."""
        with open(tls.ca, "rb") as ca, open(tls.certificate, "rb") as certificate, open(tls.key, "rb") as key:
            self._ca = ssl.Certificate.loadPEM(ca.read())
            self._mine = ssl.PrivateCertificate.loadPEM(certificate.read() + b"\n" + key.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._ca,
                                       clientCertificate=self._mine)


class EtcdClient:
    """The v3 API of one etcd cluster, reached at ``endpoints`` (``https://host:port`` each, with ``tls``;
    or ``http://``)."""

    def __init__(self, endpoints: Sequence[str], reactor: IReactorTime,
                 timeout: float = DEFAULT_TIMEOUT, tls: TLSConfig | None = None) -> None:
        if not endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        if any(url.startswith("https://") for url in endpoints) and tls is None:
            raise ValueError("https etcd endpoints need TLS files")
        self.endpoints = [url.rstrip("/") for url in endpoints]
        self.timeout = timeout
        self._clock = reactor
        # One connection per call: a connection kept from before a member restarted would fail the next
        # call for nothing, and a keepalive every few seconds does not need to save a handshake.
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = (Agent(reactor, pool=pool) if tls is None else
                       Agent(reactor, contextFactory=_SiteTLS(tls), pool=pool))
        self._first = 0

    def grant(self, ttl: int) -> Deferred[Lease]:
        """A new lease of ``ttl`` seconds (etcd may grant more: its minimum)."""
        return Deferred.fromCoroutine(self._grant(ttl))

    async def _grant(self, ttl: int) -> Lease:
        answer = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        return Lease(id=int(answer["ID"]), ttl=int(answer["TTL"]))

    def keepalive(self, lease_id: int) -> Deferred[int]:
        """Renew the lease; its TTL from now, or 0 when etcd no longer has it (expired or revoked)."""
        return Deferred.fromCoroutine(self._keepalive(lease_id))

    async def _keepalive(self, lease_id: int) -> int:
        # A stream in gRPC: the gateway answers each request message with {"result": ...} (or {"error": ...}).
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        return int(answer["result"].get("TTL", 0))

    def time_to_live(self, lease_id: int) -> Deferred[int]:
        """The lease's remaining seconds, or -1 when etcd no longer has it."""
        return Deferred.fromCoroutine(self._time_to_live(lease_id))

    async def _time_to_live(self, lease_id: int) -> int:
        return int((await self._call("/v3/lease/timetolive", {"ID": str(lease_id)}))["TTL"])

    def revoke(self, lease_id: int) -> Deferred[None]:
        """End the lease now, deleting the keys attached to it.  @raise EtcdError: no such lease."""
        return Deferred.fromCoroutine(self._revoke(lease_id))

    async def _revoke(self, lease_id: int) -> None:
        await self._call("/v3/lease/revoke", {"ID": str(lease_id)})

    def get(self, key: bytes) -> Deferred[KeyValue | None]:
        """The key, or None when it does not exist."""
        return Deferred.fromCoroutine(self._get(key))

    async def _get(self, key: bytes) -> KeyValue | None:
        kvs = (await self._call("/v3/kv/range", {"key": _encode(key)})).get("kvs")
        return KeyValue.from_json(kvs[0]) if kvs else None

    def txn(self, compare: Sequence[Op], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> Deferred[TxnResult]:
        """If every compare holds, apply ``success``, else ``failure``: atomically, in one revision."""
        return Deferred.fromCoroutine(self._txn(compare, success, failure))

    async def _txn(self, compare: Sequence[Op], success: Sequence[Op], failure: Sequence[Op]) -> TxnResult:
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        return TxnResult.from_json(await self._call("/v3/kv/txn", body))

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the first member that answers before the deadline; its answer, decoded."""
        deadline = self._clock.seconds() + self.timeout
        count = len(self.endpoints)
        missed: list[str] = []
        for tried in range(count):
            index = (self._first + tried) % count
            left = deadline - self._clock.seconds()
            if left <= 0:
                break
            endpoint = self.endpoints[index]
            try:
                posting = Deferred.fromCoroutine(self._post(endpoint + path, body))
                answer = await posting.addTimeout(left / (count - tried), self._clock)
            except (*_NO_ANSWER, _Unserving) as failure:
                missed.append(f"{endpoint}: {_describe(failure)}")
                continue
            self._first = index
            return answer
        # The next call starts with the member after the last one tried.
        self._first = (self._first + len(missed)) % count
        raise EtcdUnavailable(f"no etcd member answered {path} within {self.timeout:g} s: "
                              + "; ".join(missed))

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        response: IResponse = await self._agent.request(
            b"POST", url.encode("ascii"), Headers({b"Content-Type": [b"application/json"]}),
            FileBodyProducer(BytesIO(json.dumps(body).encode("utf-8"))))
        content = await _read_body(response)
        try:
            answer = json.loads(content)
        except ValueError:
            raise EtcdError(f"{url} answered HTTP {response.code} with no JSON: {content[:200]!r}") from None
        if not isinstance(answer, dict):
            raise EtcdError(f"{url} answered HTTP {response.code} with {answer!r}")
        problem = answer.get("error")
        if isinstance(problem, dict):  # a stream's error: {"error": {"grpc_code": ..., "message": ...}}
            code, message = problem.get("grpc_code"), problem.get("message", str(problem))
        else:
            code, message = answer.get("code"), answer.get("message") or problem
        if problem is None and response.code == 200:
            return answer
        if code == UNAVAILABLE:
            raise _Unserving(message)
        raise EtcdError(f"{url}: {message or f'HTTP {response.code}'}", code)


class _Body(Protocol):
    """Collects a response's body.  Not readBody: it warns on every call that the client's transport
    cannot abort, and its cancel does nothing then; this one's cancel closes the connection."""

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self._parts: list[bytes] = []

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:  # cancelled
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(ResponseFailed([reason]))


def _read_body(response: IResponse) -> Deferred[bytes]:
    body = _Body()
    response.deliverBody(body)
    return body.done


def _describe(failure: BaseException) -> str:
    """A member's failure in a few words (Twisted's wrapped failures name their causes)."""
    if isinstance(failure, ResponseFailed | RequestTransmissionFailed):
        return "; ".join(reason.getErrorMessage() for reason in failure.reasons)
    if isinstance(failure, defer.TimeoutError):
        return "no answer in time"
    return str(failure) or type(failure).__name__
