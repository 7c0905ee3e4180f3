"""One run per output prefix: a lease on `{output}/_lease.json`.

A run takes the lease before it plans, keeps it alive with a heartbeat while it works, and
releases it when it ends, failed or not. A second run on the same output stops at once with
OutputBusy, naming the holder's run id, host and since. A lease not renewed for LEASE_TTL_S
(its run was killed, its machine died) has expired and the next run takes it over; so does a
Retry of the same flow run (same run id), which need not wait for the expiry of its own lease.

Every change is a compare and swap (storage.write_if: S3's If-None-Match / If-Match, or a
locked exclusive update on disk), so two runs racing for a free or expired lease get it once
between them, and a holder whose lease was taken over learns it at its next renewal (`lost`).
Shards of a run hold no lease of their own: they work while their run's attempt holds it
(`held_by`), and stop taking chunks once it does not.

Expiry compares the holder's clock with the reader's: the TTL (minutes) is far above the skew
of machines kept on NTP.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

from . import storage

LEASE = "_lease.json"
logger = logging.getLogger(__name__)
# A crashed run blocks its output for at most this long; a live one renews every HEARTBEAT_S.
LEASE_TTL_S = 10 * 60
HEARTBEAT_S = 60


class OutputBusy(RuntimeError):
    """Another run holds the output's lease."""


@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    attempt: int  # the flow run's run count: a Retry is attempt 2, 3, ...
    host: str
    pid: int
    since: str  # when this holder took the lease (ISO 8601, UTC)
    expires: str  # renewed by the heartbeat; a released lease expires at its release
    released: bool = False

    def expired(self, now: datetime) -> bool:
        return self.released or datetime.fromisoformat(self.expires) <= now

    def describe(self) -> str:
        return f"run {self.run_id} on host {self.host} since {self.since}"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord | None:
        """The record, or None for one that is not a lease (damaged by hand: taken over)."""
        try:
            record = cls(**json.loads(data))
            if datetime.fromisoformat(record.expires).tzinfo is None:
                return None  # a time without its zone cannot be compared with now
            return record
        except (ValueError, TypeError, RecursionError):
            return None


def lease_uri(output: str) -> str:
    return storage.join(output, LEASE)


def current_holder(output: str) -> LeaseRecord | None:
    """Who holds the output now: None when nobody does (no lease, released or expired)."""
    found = storage.read_versioned(lease_uri(output))
    record = LeaseRecord.from_bytes(found[0]) if found else None
    return None if record is None or record.expired(_now()) else record


def held_by(output: str, run_id: str, attempt: int) -> bool:
    """Whether this attempt at run `run_id` holds the output: a shard works only while it does."""
    holder = current_holder(output)
    return holder is not None and holder.run_id == run_id and holder.attempt == attempt


class Lease:
    """The lease of one run on one output. `acquire()` or OutputBusy; `release()` at the end;
    between them a heartbeat thread renews it. Used as a context manager it does all three."""

    def __init__(self, output: str, run_id: str, attempt: int = 1, ttl_s: float = LEASE_TTL_S, heartbeat_s: float = HEARTBEAT_S):
        self.output = output
        self.uri = lease_uri(output)
        self.run_id = run_id
        self.attempt = attempt
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self.record: LeaseRecord | None = None
        self.lost = False  # another run took the lease over: stop taking work
        self._version: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> Lease:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease: a free output, an expired or released lease, or this run's own (a
        Retry of the flow run). Raises OutputBusy naming the holder otherwise.

        A transient storage error is tried again: a write whose answer was lost may have landed,
        and the next try finds this run's own record there and takes it (a run that gave up
        there would block its output, for every other run, until the lease expired)."""
        storage.retrying(self._acquire_once, storage.TRANSIENT_RETRY_DELAYS_S)

    def _acquire_once(self) -> None:
        now = _now()
        mine = LeaseRecord(
            self.run_id, self.attempt, socket.gethostname(), os.getpid(), _iso(now), _iso(now + timedelta(seconds=self.ttl_s))
        )
        for _ in range(5):  # each round loses only to another writer that changed the lease
            found = storage.read_versioned(self.uri)
            if found is None:
                version = storage.write_if(self.uri, mine.to_bytes(), None)
            else:
                holder = LeaseRecord.from_bytes(found[0])
                # A live lease is taken over only by a later attempt at the same run (a Retry),
                # never by another run, nor by an earlier attempt that outlived its Retry.
                taker = holder is None or holder.run_id == self.run_id and holder.attempt <= self.attempt
                if not taker and not holder.expired(now):
                    raise OutputBusy(f"{self.output} is in use by {holder.describe()}; try again when it has finished")
                version = storage.write_if(self.uri, mine.to_bytes(), found[1])
            if version is not None:
                self.record, self._version = mine, version
                return
        holder = current_holder(self.output)
        raise OutputBusy(f"{self.output} is in use by {holder.describe() if holder else 'another run'}")

    def renew(self) -> bool:
        """Push the expiry out by the TTL; False (and `lost`) if another run took the lease."""
        with self._lock:
            if self.record is None or self.lost:
                return False
            renewed = replace(self.record, expires=_iso(_now() + timedelta(seconds=self.ttl_s)))
            try:
                version = self._replace_own(renewed)
            except Exception:  # noqa: BLE001 - storage failing: try again at the next beat; ours until it expires
                self.lost = datetime.fromisoformat(self.record.expires) <= _now()
                return not self.lost
            if version is None:
                self.lost = True
                return False
            self.record, self._version = renewed, version
            return True

    def _replace_own(self, record: LeaseRecord) -> str | None:
        """Write `record` over this holder's lease; its new version, or None if another run's
        lease is there."""
        version = storage.write_if(self.uri, record.to_bytes(), self._version)
        if version is None and (own := self._own_version()) is not None:
            version = storage.write_if(self.uri, record.to_bytes(), own)
        return version

    def _own_version(self) -> str | None:
        """The version of the lease on storage if it is still this holder's (same run, attempt,
        host, process and since), whatever its expiry: an earlier write whose response was lost
        did land, so the version this holder knows is stale. None if another run's is there."""
        found = storage.read_versioned(self.uri)
        stored = LeaseRecord.from_bytes(found[0]) if found else None
        mine = self.record
        if stored is None or stored.released or mine is None:
            return None
        same = (stored.run_id, stored.attempt, stored.host, stored.pid, stored.since) == (
            mine.run_id,
            mine.attempt,
            mine.host,
            mine.pid,
            mine.since,
        )
        return found[1] if same else None

    def holds(self) -> bool:
        """Whether this run may go on working: its lease is not lost and, as far as it knows, not
        expired (a heartbeat held up, by a busy process say, does not stretch it)."""
        record = self.record
        return not self.lost and record is not None and datetime.fromisoformat(record.expires) > _now()

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released (expired now), if it is still ours."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with self._lock:
            if self.record is None or self.lost:
                return
            released = replace(self.record, expires=_iso(_now()), released=True)
            # Tried again on a transient error: a lease left behind blocks every other run on
            # the output until it expires (minutes), although this run has finished.
            try:
                storage.retrying(self._replace_own, storage.TRANSIENT_RETRY_DELAYS_S, released)
            except Exception:  # noqa: BLE001 - the run's work is done; its lease expires on its own
                logger.warning("could not release the lease on %s; it expires at %s", self.output, self.record.expires)
            self.record = None

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    if not self.renew():
                        return
                except Exception:  # noqa: BLE001 - a bad beat is retried at the next; expiry decides
                    continue

        self._heartbeat = threading.Thread(target=beat, name=f"lease-{self.run_id}", daemon=True)
        self._heartbeat.start()


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")
