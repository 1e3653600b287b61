"""backup_codec: compression + chunked AES-256-GCM round trips, and every way a stored object
can be wrong (truncated, flipped bit, wrong key, checksum mismatch) is caught with a clear
error instead of a silently broken restore."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import codec
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    CHUNK,
    BackupError,
    sha256_file,
)

PASSPHRASE = "correct horse battery staple"
KEY = codec.derive_key(PASSPHRASE, b"0123456789abcdef")
OTHER_KEY = codec.derive_key("another passphrase entirely", b"0123456789abcdef")


def _content(path: Path, size: int) -> Path:
    """Mostly text, some random: compresses, yet stays over 1 MiB (several records)."""
    with path.open("wb") as handle:
        written = 0
        n = 0
        while written < size:
            block = (b"row %08d some text that compresses well; " % n) * 16 + os.urandom(1024)
            block = block[: size - written]
            handle.write(block)
            written += len(block)
            n += 1
    return path


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    # 3.5 MiB: several encryption records and several lz4 blocks, with a partial last one.
    return _content(tmp_path_factory.mktemp("codec") / "plain.bin", 3 * CHUNK + CHUNK // 2)


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_round_trip(tmp_path: Path, plain: Path, compression: str, encrypted: bool) -> None:
    key = KEY if encrypted else None
    stored = tmp_path / f"obj.{codec.suffix(compression, encrypted)}"
    result = codec.encode_file(plain, stored, compression=compression, key=key)
    assert result.size == plain.stat().st_size
    assert result.sha256 == sha256_file(plain)
    assert result.stored_size == stored.stat().st_size
    assert result.stored_sha256 == sha256_file(stored)
    if compression != "none":
        assert result.stored_size < result.size * 0.8  # it really compressed
    if encrypted:
        assert stored.read_bytes()[:8] == codec.MAGIC
        assert b"some text that compresses well" not in stored.read_bytes()
    out = tmp_path / "restored"
    size, digest = codec.decode_file(
        stored,
        out,
        compression=compression,
        key=key,
        expect_sha256=result.sha256,
        expect_size=result.size,
    )
    assert (size, digest) == (result.size, result.sha256)
    assert out.read_bytes() == plain.read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp debris


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_empty_and_bytes_round_trip(compression: str) -> None:
    for data in (b"", b"x", os.urandom(CHUNK + 7)):
        for key in (None, KEY):
            blob = codec.encode_bytes(data, compression=compression, key=key)
            assert codec.decode_bytes(blob, compression=compression, key=key) == data


def test_encryption_is_randomised() -> None:
    """The same content encrypts differently each time (random nonce prefix)."""
    one = codec.encode_bytes(b"same content", compression="lz4", key=KEY)
    two = codec.encode_bytes(b"same content", compression="lz4", key=KEY)
    assert one != two


def test_suffixes() -> None:
    assert codec.suffix("lz4", False) == "lz4"
    assert codec.suffix("zstd", True) == "zst.enc"
    assert codec.suffix("none", False) == "raw"
    assert codec.parse_suffix("000000010000000000000003.zst.enc") == ("zstd", True)
    assert codec.parse_suffix("base/1/1259.lz4") == ("lz4", False)
    with pytest.raises(BackupError, match="compression must be one of"):
        codec.suffix("gzip", False)


def test_key_derivation_is_stable_fast_and_salted() -> None:
    salt = b"S" * 16
    t0 = time.perf_counter()
    key = codec.derive_key(PASSPHRASE, salt)
    elapsed = time.perf_counter() - t0
    assert len(key) == 32
    assert key == codec.derive_key(PASSPHRASE, salt.hex())
    assert key != codec.derive_key(PASSPHRASE, b"T" * 16)
    assert elapsed < 0.25, f"derive_key took {elapsed * 1000:.0f} ms (runs on every WAL push)"
    kcv = codec.key_check_value(key)
    assert len(kcv) == 16 and kcv == codec.key_check_value(key)
    assert kcv != codec.key_check_value(OTHER_KEY)
    assert PASSPHRASE not in kcv


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_wrong_key_is_named(tmp_path: Path, plain: Path, compression: str) -> None:
    stored = tmp_path / "obj"
    codec.encode_file(plain, stored, compression=compression, key=KEY)
    out = tmp_path / "out"
    with pytest.raises(BackupError, match="wrong encryption key") as err:
        codec.decode_file(stored, out, compression=compression, key=OTHER_KEY)
    assert PASSPHRASE not in str(err.value)
    assert not out.exists()


def test_missing_key_for_encrypted_object(tmp_path: Path, plain: Path) -> None:
    stored = tmp_path / "obj"
    codec.encode_file(plain, stored, compression="lz4", key=KEY)
    with pytest.raises(BackupError, match="encrypted but no encryption key"):
        codec.decode_file(stored, tmp_path / "out", compression="lz4")


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_truncation_is_detected(
    tmp_path: Path, plain: Path, compression: str, encrypted: bool
) -> None:
    key = KEY if encrypted else None
    stored = tmp_path / "obj"
    result = codec.encode_file(plain, stored, compression=compression, key=key)
    data = stored.read_bytes()
    cuts = {len(data) - 1, len(data) // 2}
    if encrypted:
        # Exactly at a record boundary: every record before it is intact and authentic.
        first_len = int.from_bytes(data[24:28], "big")
        cuts.add(24 + 4 + first_len)
    cuts.discard(len(data))
    for cut in sorted(cuts):
        stored.write_bytes(data[:cut])
        with pytest.raises(BackupError, match="truncated|corrupt|checksum mismatch"):
            codec.decode_file(
                stored,
                tmp_path / "out",
                compression=compression,
                key=key,
                expect_sha256=result.sha256,
                expect_size=result.size,
            )
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_bit_flip_is_detected(
    tmp_path: Path, plain: Path, compression: str, encrypted: bool
) -> None:
    key = KEY if encrypted else None
    stored = tmp_path / "obj"
    result = codec.encode_file(plain, stored, compression=compression, key=key)
    data = bytearray(stored.read_bytes())
    data[len(data) // 3] ^= 0x04
    stored.write_bytes(bytes(data))
    pattern = "corrupt" if encrypted else "corrupt|checksum mismatch"
    with pytest.raises(BackupError, match=pattern):
        codec.decode_file(
            stored, tmp_path / "out", compression=compression, key=key, expect_sha256=result.sha256
        )
    assert not (tmp_path / "out").exists()


def test_checksum_mismatch_names_the_file(tmp_path: Path, plain: Path) -> None:
    stored = tmp_path / "obj"
    codec.encode_file(plain, stored, compression="zstd")
    with pytest.raises(BackupError, match="checksum mismatch .*sha256"):
        codec.decode_file(stored, tmp_path / "out", compression="zstd", expect_sha256="0" * 64)
    with pytest.raises(BackupError, match="checksum mismatch .*size"):
        codec.decode_file(stored, tmp_path / "out", compression="zstd", expect_size=1)
    assert not (tmp_path / "out").exists()


def test_record_reordering_is_detected(tmp_path: Path) -> None:
    """Swapping two whole encrypted records (same length) fails authentication."""
    data = os.urandom(3 * CHUNK)
    blob = bytearray(codec.encode_bytes(data, compression="none", key=KEY))
    rec = 4 + CHUNK + codec.TAG_SIZE
    first = bytes(blob[24 : 24 + rec])
    second = bytes(blob[24 + rec : 24 + 2 * rec])
    blob[24 : 24 + rec] = second
    blob[24 + rec : 24 + 2 * rec] = first
    with pytest.raises(BackupError, match="corrupt"):
        codec.decode_bytes(bytes(blob), compression="none", key=KEY)


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_encoder_one_pass_into_plain_and_encrypted_outputs(
    tmp_path: Path, plain: Path, compression: str
) -> None:
    """The engine compresses and hashes each file once and writes one stored stream per key
    variant: each output decodes to the content, with its own stored size and sha256."""
    outs = {"plain": tmp_path / "o.plain", "enc": tmp_path / "o.enc"}
    with outs["plain"].open("wb") as p_out, outs["enc"].open("wb") as e_out:
        encoder = codec.Encoder(
            [(p_out, None), (e_out, KEY)], compression=compression, size_hint=-1
        )
        with plain.open("rb") as src:
            for block in iter(lambda: src.read(300_001), b""):  # not CHUNK-aligned
                encoder.write(block)
        results = encoder.finish()
    want = sha256_file(plain)
    for (name, path), result, key in zip(outs.items(), results, (None, KEY), strict=True):
        assert result.size == plain.stat().st_size
        assert result.sha256 == want
        assert result.stored_size == path.stat().st_size
        assert result.stored_sha256 == sha256_file(path), name
        out = tmp_path / f"back.{name}"
        size, digest = codec.decode_file(
            path, out, compression=compression, key=key, expect_sha256=want
        )
        assert (size, digest) == (result.size, want)
        assert out.read_bytes() == plain.read_bytes()
    assert outs["enc"].read_bytes()[:8] == codec.MAGIC
    assert b"some text that compresses well" not in outs["enc"].read_bytes()
