# -*- test-case-name: tests.failover.test_ownership -*-
"""Which node owns a domain, and in which epoch: two etcd keys per domain, changed only by transactions.

``<prefix><domain>/owner`` holds ``{"epoch": n, "node": name}``, attached to
the owner's lease, so it vanishes when that lease expires or is revoked;
``<prefix><domain>/epoch`` holds the newest epoch, attached to no lease, so it
survives everything.  Both are written together, by a claim.

Why there can never be two owners:

- A claim is one etcd transaction, and etcd's transactions are linearizable:
  it wins only if the epoch key still holds the epoch the claimer knows, and
  writes the next one.  So at most one claim wins per epoch, and a node that
  knows an older epoch can win none.
- It also wins only if the owner key is absent or names the claimer.  The key
  holds its owner's lease, so while that lease lives no other node can win;
  it goes only when the owner's lease expires (or the owner releases it).
- The owner's LeaseKeeper calls ``on_expiring`` (the primary pauses its guest)
  at its safe deadline, which comes before the lease can expire in etcd.  So
  by the time another node can win a claim, the former owner has stopped.

A claim may be sent again after an answer lost on the way (the client tries
the next member): a claim that finds the owner key naming this node with the
very epoch it would have written, on its own lease, was this claim, and won.
"""

from __future__ import annotations

import json

import attrs
from twisted.internet.defer import Deferred

from colod.failover.etcd import EtcdClient, KeyValue, created, delete, get, modified, nested, put, value_is
from colod.failover.lease import LeaseKeeper

DEFAULT_PREFIX = "/colod/"


class NotLeased(Exception):
    """This node has no lease it may act on (not granted yet, lost, or past its safe deadline)."""


class MalformedRecord(Exception):
    """A domain's key in etcd holds something colod never writes."""


@attrs.frozen
class Owner:
    """A domain's owner: the node that runs it as primary, and in which epoch."""

    node: str
    epoch: int


@attrs.frozen
class Standing:
    """What etcd says of a domain: its owner (None: none, or its lease went), its newest epoch (0: none)."""

    owner: Owner | None
    epoch: int


@attrs.frozen
class ClaimResult:
    """A claim's outcome, and the domain's owner and newest epoch as the same transaction saw them."""

    won: bool
    owner: Owner | None
    epoch: int


class Ownership:
    """Claims, reads and releases of domains under ``prefix``, for the node whose lease ``keeper`` keeps."""

    def __init__(self, client: EtcdClient, keeper: LeaseKeeper, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self._client = client
        self._keeper = keeper

    def owner_key(self, domain: str) -> bytes:
        return f"{self.prefix}{domain}/owner".encode()

    def epoch_key(self, domain: str) -> bytes:
        return f"{self.prefix}{domain}/epoch".encode()

    def claim(self, domain: str, node: str, known_epoch: int) -> Deferred[ClaimResult]:
        """Own ``domain`` as ``node`` in epoch ``known_epoch + 1``, if etcd's epoch is still ``known_epoch``
        and no other node owns it.  A won claim does not wait for a renewal: act on it only while the
        keeper is safe(), as ever.  @raise NotLeased: the keeper's lease is not safe to act on.
        @raise EtcdUnavailable, EtcdError: etcd did not answer, or refused (e.g. the lease had expired)."""
        return Deferred.fromCoroutine(self._claim(domain, node, known_epoch))

    async def _claim(self, domain: str, node: str, known_epoch: int) -> ClaimResult:
        if self._keeper.lease is None or not self._keeper.safe():
            raise NotLeased(f"no safe etcd lease to claim {domain} with")
        lease = self._keeper.lease.id
        owner, epoch = self.owner_key(domain), self.epoch_key(domain)
        epoch_holds = created(epoch) if known_epoch == 0 else value_is(epoch, _epoch_value(known_epoch))
        new = Owner(node, known_epoch + 1)
        writes = [put(owner, _owner_value(new), lease), put(epoch, _epoch_value(new.epoch))]
        # etcd's compares are all ANDed: "absent, or already this node's" is a nested transaction.
        already_mine = [epoch_holds, value_is(owner, _owner_value(Owner(node, known_epoch)))]
        result = await self._client.txn(
            [epoch_holds, created(owner)], writes,
            [nested(already_mine, writes, [get(owner), get(epoch)])])
        if result.innermost().succeeded:
            return ClaimResult(won=True, owner=new, epoch=new.epoch)
        found_owner, found_epoch = result.innermost().ranges()
        standing = _standing(found_owner, found_epoch)
        repeated = standing.owner == new and found_owner is not None and found_owner.lease == lease
        return ClaimResult(won=repeated, owner=standing.owner, epoch=standing.epoch)

    def read(self, domain: str) -> Deferred[Standing]:
        """The domain's owner and newest epoch, read together."""
        return Deferred.fromCoroutine(self._read(domain))

    async def _read(self, domain: str) -> Standing:
        result = await self._client.txn([], [get(self.owner_key(domain)), get(self.epoch_key(domain))])
        return _standing(*result.ranges())

    def release(self, domain: str, node: str) -> Deferred[bool]:
        """Delete the owner key if it names ``node`` (a clean stop or handover); whether it did."""
        return Deferred.fromCoroutine(self._release(domain, node))

    async def _release(self, domain: str, node: str) -> bool:
        key = self.owner_key(domain)
        found = await self._client.get(key)
        if found is None or _owner(found).node != node:
            return False
        # Only that very version: a newer one was written by a claim this release must not undo.
        result = await self._client.txn([modified(key, found.mod_revision)], [delete(key)])
        return result.succeeded


def _owner_value(owner: Owner) -> bytes:
    # One spelling per owner: a claim compares the value byte for byte.
    record = {"epoch": owner.epoch, "node": owner.node}
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _epoch_value(epoch: int) -> bytes:
    return str(epoch).encode()


def _owner(kv: KeyValue) -> Owner:
    try:
        record = json.loads(kv.value)
        return Owner(node=str(record["node"]), epoch=int(record["epoch"]))
    except (ValueError, TypeError, KeyError) as error:
        raise MalformedRecord(f"{kv.key.decode(errors='replace')} holds {kv.value[:200]!r}") from error


def _epoch(kv: KeyValue) -> int:
    try:
        return int(kv.value)
    except ValueError:
        raise MalformedRecord(f"{kv.key.decode(errors='replace')} holds {kv.value[:200]!r}") from None


def _standing(owner: KeyValue | None, epoch: KeyValue | None) -> Standing:
    return Standing(owner=_owner(owner) if owner else None, epoch=_epoch(epoch) if epoch else 0)
