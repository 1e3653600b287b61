"""The full backup's hand-off from pg_basebackup's stream to the encoders: file content passes
in memory within a byte budget, in order and complete; an encoder that gives up does not leave
the reader waiting, and a stream that breaks inside a file fails that file's encoder."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import native
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
)

BLOCK = 64 * 1024


def _reader(feeds, blocks, budget, peak):
    for feed in feeds:
        for block in blocks:
            feed.put(block)
            with budget.cond:
                peak[0] = max(peak[0], budget.held)
        feed.close()


def test_two_files_in_flight_within_the_budget_and_complete() -> None:
    budget = native._Budget(4 * BLOCK)
    blocks = [os.urandom(BLOCK) for _ in range(40)]
    want = hashlib.sha256(b"".join(blocks)).hexdigest()
    feeds = [native._Feed(budget), native._Feed(budget)]
    got = {}

    def encoder(i):
        digest = hashlib.sha256()
        for block in feeds[i]:
            time.sleep(0.001)  # slower than the reader: the budget must hold it back
            digest.update(block)
        got[i] = digest.hexdigest()

    peak = [0]
    workers = [threading.Thread(target=encoder, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    _reader(feeds, blocks, budget, peak)
    for worker in workers:
        worker.join(10)
    assert got == {0: want, 1: want}
    assert 0 < peak[0] <= 4 * BLOCK
    assert budget.held == 0


def test_a_dropped_feed_does_not_block_the_reader() -> None:
    budget = native._Budget(2 * BLOCK)
    feed = native._Feed(budget)
    feed.put(b"x" * BLOCK)
    feed.put(b"x" * BLOCK)
    reader = threading.Thread(target=lambda: [feed.put(b"y" * BLOCK) for _ in range(50)])
    reader.start()
    time.sleep(0.2)
    assert reader.is_alive()  # waiting for room: nobody reads
    feed.drop()  # the encoder failed
    reader.join(5)
    assert not reader.is_alive()
    assert budget.held == 0


def test_a_stream_broken_inside_a_file_fails_its_encoder() -> None:
    budget = native._Budget(8 * BLOCK)
    feed = native._Feed(budget)
    feed.put(b"z" * BLOCK)
    feed.close(error="pg_basebackup's stream broke inside this file")
    chunks = iter(feed)
    assert next(chunks) == b"z" * BLOCK
    with pytest.raises(BackupError, match="broke inside this file"):
        next(chunks)


def test_uploader_stores_a_path_bytes_and_chunks_alike(tmp_path) -> None:
    """The encoders take a file by path (data directory), bytes (small files, backup_label)
    or chunks (the stream): the same content gives the same stored object and checksums."""
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import codec
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.config import (
        BackupConfig,
    )

    cfg = BackupConfig.from_dict(
        {
            "cluster": "kgt",
            "spool_dir": str(tmp_path / "spool"),
            "catalog_dir": str(tmp_path / "catalog"),
            "compression": "lz4",
            "locations": [{"name": "d", "type": "local", "path": str(tmp_path / "d")}],
        }
    )
    targets, failures = native.open_targets(cfg)
    assert not failures
    enc = tmp_path / "enc"
    enc.mkdir()
    uploader = native._Uploader(cfg, targets, str(enc), lambda *a: None, label="L")
    content = b"".join(b"row %06d of the stream " % i for i in range(40_000))
    src = tmp_path / "src"
    src.write_bytes(content)
    try:
        stored = {
            "path": uploader.store(str(src), lambda _e: "x/path"),
            "bytes": uploader.store(content, lambda _e: "x/bytes"),
            "chunks": uploader.store(
                (content[i : i + BLOCK] for i in range(0, len(content), BLOCK)),
                lambda _e: "x/chunks",
            ),
        }
    finally:
        uploader.close()
    want = hashlib.sha256(content).hexdigest()
    for name, results in stored.items():
        res = results["plain"]
        assert (res.size, res.sha256) == (len(content), want), name
        data = targets[0].location.get_bytes(f"x/{name}")
        assert len(data) == res.stored_size < len(content)
        assert hashlib.sha256(data).hexdigest() == res.stored_sha256
        assert codec.decode_bytes(data, compression="lz4", expect_sha256=want) == content
