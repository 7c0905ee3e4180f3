"""One run per output prefix, on disk and on S3: a second run stops naming the holder; an
expired lease is taken over; a Retry of the same run takes over its own lease; a released
lease frees the output; a holder whose lease was taken over learns it at its next renewal."""

import dataclasses
import json
import threading
import time

import pytest

from pipeline import leases, storage
from pipeline.leases import Lease, OutputBusy, current_holder, held_by


def test_a_second_run_on_the_same_output_stops_naming_the_holder(out):
    first = Lease(out, "run-a")
    first.acquire()
    holder = current_holder(out)
    assert (holder.run_id, holder.attempt) == ("run-a", 1)
    with pytest.raises(OutputBusy) as busy:
        Lease(out, "run-b").acquire()
    message = str(busy.value)
    assert "\n" not in message
    assert f"{out} is in use by run run-a on host {holder.host} since {holder.since}" in message
    assert current_holder(out).run_id == "run-a"  # the refused run changed nothing

    first.release()
    assert current_holder(out) is None
    second = Lease(out, "run-b")
    second.acquire()  # released: free for the next run
    assert current_holder(out).run_id == "run-b"


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(out):
    crashed = Lease(out, "run-a", ttl_s=0.5)
    crashed.acquire()
    with pytest.raises(OutputBusy):
        Lease(out, "run-b").acquire()
    time.sleep(0.6)  # no heartbeat: the run died
    assert current_holder(out) is None
    taker = Lease(out, "run-b")
    taker.acquire()
    assert current_holder(out).run_id == "run-b"
    # The old holder comes back to life: its renewal fails, and its release leaves the new lease.
    assert not crashed.renew() and crashed.lost
    crashed.release()
    assert current_holder(out).run_id == "run-b"
    # One that releases without a renewal first (it does not know it lost) leaves it too.
    taker.release()
    quiet = Lease(out, "run-c", ttl_s=0.5)
    quiet.acquire()
    time.sleep(0.6)
    Lease(out, "run-d").acquire()
    quiet.release()
    assert current_holder(out).run_id == "run-d"


def test_a_retry_of_the_same_run_takes_over_its_own_lease(out):
    Lease(out, "run-a", attempt=1).acquire()  # the first attempt crashed, its lease still fresh
    retry = Lease(out, "run-a", attempt=2)
    retry.acquire()
    assert (current_holder(out).run_id, current_holder(out).attempt) == ("run-a", 2)
    # The crashed attempt's shards stop taking chunks: the lease is the retry's now.
    assert held_by(out, "run-a", 2) and not held_by(out, "run-a", 1) and not held_by(out, "run-b", 2)
    # The first attempt, still alive after all, cannot take it back.
    with pytest.raises(OutputBusy, match="in use by run run-a"):
        Lease(out, "run-a", attempt=1).acquire()
    assert held_by(out, "run-a", 2)


def test_the_heartbeat_keeps_a_working_run_s_lease_and_release_ends_it(out):
    with Lease(out, "run-a", ttl_s=1.0, heartbeat_s=0.2) as lease:
        first_expiry = lease.record.expires
        time.sleep(1.5)  # past the first expiry: only the heartbeat keeps the lease
        assert current_holder(out).run_id == "run-a" and lease.record.expires > first_expiry
        with pytest.raises(OutputBusy):
            Lease(out, "run-b").acquire()
    record = json.loads(storage.read_bytes(leases.lease_uri(out)))
    assert record["released"] and record["run_id"] == "run-a"
    assert current_holder(out) is None


def test_two_runs_racing_for_a_free_output_get_it_once(out):
    results = {}
    start = threading.Barrier(4)

    def race(name):
        start.wait()
        try:
            Lease(out, name).acquire()
            results[name] = "holder"
        except OutputBusy:
            results[name] = "busy"

    threads = [threading.Thread(target=race, args=(f"run-{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == ["busy", "busy", "busy", "holder"]
    assert results[current_holder(out).run_id] == "holder"


def test_a_lease_whose_expiry_has_no_time_zone_is_damaged_and_taken_over(tmp_path):
    out = str(tmp_path / "out")
    record = {
        "run_id": "old",
        "attempt": 1,
        "host": "h",
        "pid": 1,
        "since": "2026-12-01T00:00:00",
        "expires": "2099-01-01T00:00:00",
    }
    storage.write_bytes(leases.lease_uri(out), json.dumps(record).encode())
    assert current_holder(out) is None  # it used to raise TypeError comparing it with an aware now
    with Lease(out, "new") as lease:
        assert current_holder(out).run_id == "new" and not lease.lost


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_renewal_whose_response_was_lost_keeps_the_lease(where, s3, tmp_path, monkeypatch):
    """The write landed but its answer did not: the holder's version is stale, and the next
    renewal's conditional write is refused. It must find its own record there, not give up the
    run (which then stopped taking chunks and left the output blocked for ten minutes)."""
    out = "s3://catalog/out" if where == "s3" else str(tmp_path / "out")
    lease = Lease(out, "run-1")
    lease.acquire()
    write_if = storage.write_if

    def lost_response(uri, data, version):
        write_if(uri, data, version)
        raise storage.TransientStorageError(f"{uri}: S3 unreachable (ConnectionClosedError; transient)")

    monkeypatch.setattr(storage, "write_if", lost_response)
    assert lease.renew() and not lease.lost  # still ours until it expires
    monkeypatch.setattr(storage, "write_if", write_if)
    assert lease.renew() and not lease.lost  # the stale version is refused; its own record is found
    assert current_holder(out).run_id == "run-1"
    lease.release()
    assert current_holder(out) is None

    other = Lease(out, "run-2")
    other.acquire()
    late = Lease(out, "run-1")
    # What a holder of run-1 knew, while storage holds run-2's lease: never taken for its own.
    late.record, late._version = dataclasses.replace(other.record, run_id="run-1"), "stale"
    assert not late.renew() and late.lost
    other.release()


def test_a_release_that_fails_does_not_fail_the_run(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    lease = Lease(out, "run-1")
    lease.acquire()
    monkeypatch.setattr(storage, "TRANSIENT_RETRY_DELAYS_S", (0.0, 0.0))

    def failing(uri, data, version):
        raise storage.TransientStorageError(f"{uri}: S3 error SlowDown (transient)")

    monkeypatch.setattr(storage, "write_if", failing)
    lease.release()  # logged; the lease expires on its own
    assert lease.record is None


def _flaky_writes(monkeypatch, *, landed: bool, failures: int = 1) -> list:
    """storage.write_if raising a transient error on its first `failures` calls, after the write
    (`landed`: its answer was lost) or instead of it; returns the list of failed calls."""
    write_if = storage.write_if
    failed = []

    def flaky(uri, data, version):
        if len(failed) < failures:
            failed.append(uri)
            if landed:
                write_if(uri, data, version)
            raise storage.TransientStorageError(f"{uri}: S3 unreachable (ConnectionClosedError; transient)")
        return write_if(uri, data, version)

    monkeypatch.setattr(storage, "TRANSIENT_RETRY_DELAYS_S", (0.0, 0.0))
    monkeypatch.setattr(storage, "write_if", flaky)
    return failed


@pytest.mark.parametrize("landed", [False, True], ids=["refused", "answer-lost"])
def test_a_release_that_meets_a_transient_error_still_frees_the_output(out, monkeypatch, landed):
    """The chaos suite's failure: the release met an S3 error, the lease stayed, and the
    operator's next run was refused for ten minutes by a run that had finished."""
    lease = Lease(out, "run-1")
    lease.acquire()
    failed = _flaky_writes(monkeypatch, landed=landed)
    lease.release()
    assert failed and current_holder(out) is None
    with Lease(out, "run-2"):
        assert current_holder(out).run_id == "run-2"


@pytest.mark.parametrize("landed", [False, True], ids=["refused", "answer-lost"])
def test_an_acquire_that_meets_a_transient_error_takes_the_lease(out, monkeypatch, landed):
    """Whether or not the first write landed, the run holds the lease once acquire returns, and
    releases it; it never leaves behind a lease in its own name that it does not know it holds."""
    failed = _flaky_writes(monkeypatch, landed=landed, failures=2)
    with Lease(out, "run-1") as lease:
        assert len(failed) == 2 and not lease.lost
        assert current_holder(out).run_id == "run-1"
        with pytest.raises(OutputBusy):
            Lease(out, "run-2").acquire()
    assert current_holder(out) is None


def test_a_run_stops_working_once_its_lease_has_expired_even_before_a_heartbeat_says_so(tmp_path):
    out = str(tmp_path / "out")
    lease = Lease(out, "run-1", ttl_s=0.2, heartbeat_s=60)  # no beat will come in time
    lease.acquire()
    assert lease.holds()
    time.sleep(0.3)
    assert not lease.lost and not lease.holds()  # the flow's keep_going asks holds()
