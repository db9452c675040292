"""Conformance of ``SQLStorage``: saving and reading checkpoints, on every backend."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from durable_jobs.errors import CheckpointConflict
from durable_jobs.job import Checkpoint
from durable_jobs.storage import SQLStorage

from .helpers import W1, W2, claim_one, make_job

# -- checkpoints --------------------------------------------------------------------------


def test_checkpoints_save_get_delete(storage: SQLStorage) -> None:
    created = datetime(2030, 1, 1, 12, 0, 0, 5, tzinfo=UTC)
    for index in (10, 0, 2):
        storage.save_checkpoint(
            Checkpoint(
                job_id="j1",
                call_index=index,
                call_type=f"step-{index}",
                result=f'{{"i":{index}}}'.encode(),
                created_at=created,
            )
        )
    storage.save_checkpoint(Checkpoint(job_id="j1", scope="2", call_index=0, call_type="inner"))
    storage.save_checkpoint(
        Checkpoint(job_id="j1", call_index=3, call_type="charge", error="NoRetry: declined")
    )
    storage.save_checkpoint(Checkpoint(job_id="j2", call_index=0, call_type="other"))

    cps = storage.get_checkpoints("j1")
    assert [(c.scope, c.call_index) for c in cps] == [("", 0), ("", 2), ("", 3), ("", 10), ("2", 0)]
    by_key = {(c.scope, c.call_index): c for c in cps}
    first = by_key[("", 0)]
    assert first.call_type == "step-0" and first.result == b'{"i":0}' and first.error is None
    assert first.created_at == created and first.job_id == "j1"
    assert first.id  # assigned
    assert len({c.id for c in cps}) == len(cps)
    failed = by_key[("", 3)]
    assert failed.error == "NoRetry: declined" and failed.result is None
    assert by_key[("2", 0)].call_type == "inner"

    # Saving another checkpoint at the same position raises and keeps the first.
    with pytest.raises(CheckpointConflict, match="durable call 3"):
        storage.save_checkpoint(
            Checkpoint(job_id="j1", call_index=3, call_type="charge", result=b"1")
        )
    kept = next(c for c in storage.get_checkpoints("j1") if c.call_index == 3)
    assert kept == failed
    assert len(storage.get_checkpoints("j1")) == 5

    storage.delete_checkpoints("j1")
    assert storage.get_checkpoints("j1") == []
    assert [c.call_type for c in storage.get_checkpoints("j2")] == ["other"]
    assert storage.get_checkpoints("no-such-job") == []


def test_checkpoint_keeps_a_given_id(storage: SQLStorage) -> None:
    cp = Checkpoint(id="cp-1", job_id="j", call_index=0, call_type="s", result=b"null")
    storage.save_checkpoint(cp)
    [stored] = storage.get_checkpoints("j")
    assert stored == cp


def test_save_checkpoint_is_fenced_when_given_the_run(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())

    def cp(index: int) -> Checkpoint:
        return Checkpoint(job_id=job_id, call_index=index, call_type="s", result=b"1")

    assert storage.save_checkpoint(cp(0), worker_id=W1, attempt=1) is False  # not running
    claim_one(storage)
    assert storage.save_checkpoint(cp(0), worker_id=W2, attempt=1) is False
    assert storage.save_checkpoint(cp(0), worker_id=W1, attempt=2) is False
    assert storage.get_checkpoints(job_id) == []
    assert storage.save_checkpoint(cp(0), worker_id=W1, attempt=1) is True
    assert storage.save_checkpoint(cp(1)) is True  # unfenced
    assert [c.call_index for c in storage.get_checkpoints(job_id)] == [0, 1]


def test_a_checkpoint_position_is_never_overwritten(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    job = claim_one(storage)
    first = Checkpoint(job_id=job_id, call_index=0, call_type="a", result=b'"first"')
    assert storage.save_checkpoint(first, worker_id=W1, attempt=job.attempt) is True
    # The same checkpoint again (a write retried after its reply was lost) is saved.
    assert storage.save_checkpoint(first, worker_id=W1, attempt=job.attempt) is True

    def other() -> Checkpoint:
        return Checkpoint(job_id=job_id, call_index=0, call_type="b", result=b'"second"')

    with pytest.raises(CheckpointConflict, match="already has a checkpoint"):
        storage.save_checkpoint(other(), worker_id=W1, attempt=job.attempt)
    with pytest.raises(CheckpointConflict):
        storage.save_checkpoint(other())  # unfenced
    # A run that lost the lock hears that, not that the position is taken.
    assert storage.save_checkpoint(other(), worker_id=W2, attempt=job.attempt) is False
    assert storage.get_checkpoints(job_id) == [first]
    nested = Checkpoint(job_id=job_id, scope="0", call_index=0, call_type="b")
    assert storage.save_checkpoint(nested, worker_id=W1, attempt=job.attempt) is True
