# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compress (lz4 / zstd / none) and encrypt (AES-256-GCM, chunked) backup objects, and back.

Streaming in 1 MiB pieces, so a 1 GB relation file needs a few MB of memory. The libraries do
the heavy lifting with the GIL released (lz4.frame, zstandard, OpenSSL through cryptography,
hashlib), so several files can be encoded in parallel threads.

Encrypted format (after compression), all integers big-endian:

    header  = b"KGENC\\x00\\x01\\x00" (8) | key check (8) | random nonce prefix (8)
    record  = length L (4) | AES-256-GCM ciphertext + tag (L bytes)
    nonce   = nonce prefix (8) | record counter (4)
    AAD     = header | final flag (1 byte: 1 for the last record, else 0)

The last record (possibly empty) is the only one sealed with final flag 1, so a file cut at
any record boundary fails authentication ("truncated"), as does any flipped bit. The key check
lets a wrong key be told apart from corruption.

Imports lz4 / zstandard / cryptography lazily: a location that does not compress or encrypt
works without them.
"""

import contextlib
import dataclasses
import hashlib
import hmac
import io
import os
import struct
import tempfile

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    CHUNK,
    COMPRESSIONS,
    BackupError,
)

MAGIC = b"KGENC\x00\x01\x00"
HEADER_SIZE = 24
TAG_SIZE = 16
_MAX_RECORD = 64 * 1024 * 1024  # a corrupt length must not make us allocate gigabytes
_KCV_INFO = b"knowngood key check v1"
_SUFFIX = {"lz4": "lz4", "zstd": "zst", "none": "raw"}
KEY_SIZE = 32
SALT_SIZE = 16
# scrypt cost: about 15-30 ms on a small VM (it runs once per WAL push), 8 MiB of memory.
_SCRYPT_N = 2**13
_SCRYPT_R = 8
_SCRYPT_P = 1


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    size: int  # plain content bytes
    sha256: str  # of the plain content
    stored_size: int  # bytes after compression (+ encryption)
    stored_sha256: str  # of the stored bytes

    def to_dict(self):
        return dataclasses.asdict(self)


# ---- keys ------------------------------------------------------------------------------------


def derive_key(passphrase, salt):
    """32-byte AES key from the configured passphrase and a repository salt (scrypt)."""
    if not passphrase:
        raise BackupError("encryption_key is empty: cannot derive an encryption key")
    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    if isinstance(salt, str):
        salt = bytes.fromhex(salt)
    if not salt or len(salt) < 8:
        raise BackupError("encryption salt must be at least 8 bytes")
    return hashlib.scrypt(
        passphrase,
        salt=salt,
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        maxmem=64 * 1024 * 1024,
        dklen=KEY_SIZE,
    )


def new_salt():
    return os.urandom(SALT_SIZE)


def key_check_value(key):
    """A short public fingerprint of a key (HMAC of a constant): tells a wrong key apart."""
    _check_key(key)
    return hmac.new(key, _KCV_INFO, hashlib.sha256).hexdigest()[:16]


def _check_key(key):
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise BackupError("encryption key must be 32 bytes (use derive_key)")


def suffix(compression, encrypted):
    """Object name extension: lz4 | zst | raw, plus .enc when encrypted."""
    if compression not in _SUFFIX:
        raise BackupError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    return _SUFFIX[compression] + (".enc" if encrypted else "")


def parse_suffix(name):
    """(compression, encrypted) from an object name's extension; None if it has none of ours."""
    encrypted = name.endswith(".enc")
    base = name[:-4] if encrypted else name
    for compression, ext in _SUFFIX.items():
        if base.endswith("." + ext):
            return compression, encrypted
    return None


# ---- compression -----------------------------------------------------------------------------


def _compressor(compression, level, size_hint=-1):
    """An object with compress(data) -> bytes and flush() -> bytes."""
    if compression == "lz4":
        try:
            import lz4.frame
        except ImportError as err:
            raise BackupError("compression lz4 needs the python lz4 package") from err
        comp = lz4.frame.LZ4FrameCompressor(
            compression_level=level,
            block_size=lz4.frame.BLOCKSIZE_MAX4MB,
            content_checksum=False,
            auto_flush=True,
        )
        return _Lz4Compressor(comp)
    if compression == "zstd":
        try:
            import zstandard
        except ImportError as err:
            raise BackupError("compression zstd needs the python zstandard package") from err
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=size_hint >= 0)
        return cctx.compressobj(size=size_hint)
    if compression == "none":
        return _Identity()
    raise BackupError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")


def preload(compression, encrypt):
    """Import now, on the calling thread, what encoding imports lazily.

    For callers about to encode in worker threads: two threads' first imports deadlocked
    on the import locks once (cryptography importing email.utils while botocore, through
    six.moves, imported http.client). A missing library is not an error here; encoding
    names it where it is needed."""
    with contextlib.suppress(BackupError):
        _compressor(compression, 1)
        if encrypt:
            _aesgcm(bytes(KEY_SIZE))


class _Identity:
    eof = None

    def compress(self, data):
        return data

    def decompress(self, data):
        return data

    def flush(self):
        return b""


class _Lz4Compressor:
    def __init__(self, comp):
        self._comp = comp
        self._started = False

    def compress(self, data):
        if not self._started:
            self._started = True
            return self._comp.begin() + self._comp.compress(data)
        return self._comp.compress(data)

    def flush(self):
        head = b"" if self._started else self._comp.begin()
        self._started = True
        return head + self._comp.flush()


class _Lz4Decompressor:
    def __init__(self):
        import lz4.frame

        self._d = lz4.frame.LZ4FrameDecompressor()
        self._lz4 = lz4.frame

    def decompress(self, data):
        out = []
        while data:
            if self._d.eof:
                raise BackupError("unexpected data after the end of the lz4 stream")
            out.append(self._d.decompress(data))
            data = self._d.unused_data if self._d.eof else b""
        return b"".join(out) if len(out) != 1 else out[0]

    @property
    def eof(self):
        return self._d.eof


class _ZstdDecompressor:
    def __init__(self):
        import zstandard

        self._d = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data):
        return self._d.decompress(data)

    @property
    def eof(self):
        return getattr(self._d, "eof", None)


def _decompressor(compression):
    try:
        if compression == "lz4":
            return _Lz4Decompressor()
        if compression == "zstd":
            return _ZstdDecompressor()
    except ImportError as err:
        raise BackupError(f"compression {compression} needs its python package") from err
    if compression == "none":
        return _Identity()
    raise BackupError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")


# ---- encryption ------------------------------------------------------------------------------


def _aesgcm(key):
    _check_key(key)
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as err:
        raise BackupError("encryption needs the python cryptography package") from err
    return AESGCM(bytes(key))


class _HashingWriter:
    """Writes to a file object, counting and hashing what goes through."""

    def __init__(self, fh):
        self.fh = fh
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data):
        if data:
            self.digest.update(data)
            self.fh.write(data)
            self.size += len(data)

    def close(self):
        pass


class _EncryptingWriter:
    """Seals what is written in records of about CHUNK bytes; close() writes the final one."""

    def __init__(self, out, key):
        self.out = out
        self.aead = _aesgcm(key)
        self.header = MAGIC + bytes.fromhex(key_check_value(key)) + os.urandom(8)
        self.prefix = self.header[16:24]
        self.counter = 0
        self.buf = bytearray()
        out.write(self.header)

    def _seal(self, data, final):
        if self.counter >= 0xFFFFFFFF:
            raise BackupError("object too large for one encryption stream")
        nonce = self.prefix + struct.pack(">I", self.counter)
        self.counter += 1
        sealed = self.aead.encrypt(
            nonce, bytes(data), self.header + (b"\x01" if final else b"\x00")
        )
        self.out.write(struct.pack(">I", len(sealed)))
        self.out.write(sealed)

    def write(self, data):
        if not data:
            return
        if not self.buf and len(data) >= CHUNK:
            self._seal(data, False)
            return
        self.buf += data
        if len(self.buf) >= CHUNK:
            self._seal(self.buf, False)
            self.buf = bytearray()

    def close(self):
        self._seal(self.buf, True)
        self.buf = bytearray()


def _read_exact(fh, size):
    data = fh.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = fh.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _decrypt_records(fh, key):
    """Yield the plaintext records of an encrypted stream, verifying order and completeness."""
    header = _read_exact(fh, HEADER_SIZE)
    if len(header) < HEADER_SIZE or header[:8] != MAGIC:
        raise BackupError(
            "not an encrypted knowngood object (bad header): corrupt or not encrypted"
        )
    if header[8:16] != bytes.fromhex(key_check_value(key)):
        raise BackupError("wrong encryption key: the object was encrypted with another key")
    aead = _aesgcm(key)
    prefix = header[16:24]
    counter = 0
    length_bytes = _read_exact(fh, 4)
    from cryptography.exceptions import InvalidTag

    while True:
        if len(length_bytes) < 4:
            raise BackupError("encrypted object is truncated (final record missing)")
        (length,) = struct.unpack(">I", length_bytes)
        if length < TAG_SIZE or length > _MAX_RECORD:
            raise BackupError("encrypted object is corrupt (bad record length)")
        sealed = _read_exact(fh, length)
        if len(sealed) < length:
            raise BackupError("encrypted object is truncated (short record)")
        length_bytes = _read_exact(fh, 4)
        final = not length_bytes
        nonce = prefix + struct.pack(">I", counter)
        counter += 1
        try:
            plain = aead.decrypt(nonce, sealed, header + (b"\x01" if final else b"\x00"))
        except InvalidTag:
            if final:
                raise BackupError(
                    "encrypted object is corrupt or truncated (authentication failed)"
                ) from None
            raise BackupError("encrypted object is corrupt (authentication failed)") from None
        yield plain
        if final:
            return


# ---- streams ---------------------------------------------------------------------------------


class Encoder:
    """Encodes one object as it is written to, into one stored stream per key: compressed
    once, the content hashed once, then encrypted (when the key is not None) and hashed per
    output. finish() returns an EncodeResult per output, in the order of `outs`.

    outs: [(binary file object, key or None)]; the writers need not be seekable, so content
    can arrive in pieces from a pipe and go to several locations' variants in one pass."""

    def __init__(self, outs, *, compression, level=1, size_hint=-1):
        self._comp = _compressor(compression, level, size_hint)
        self._plain = hashlib.sha256()
        self.size = 0
        self._stored = [_HashingWriter(fh) for fh, _key in outs]
        self._sinks = [
            _EncryptingWriter(stored, key) if key is not None else stored
            for stored, (_fh, key) in zip(self._stored, outs, strict=True)
        ]

    def write(self, block):
        if not block:
            return
        self.size += len(block)
        self._plain.update(block)
        out = self._comp.compress(block)
        for sink in self._sinks:
            sink.write(out)

    def finish(self):
        tail = self._comp.flush()
        for sink in self._sinks:
            sink.write(tail)
            sink.close()
        digest = self._plain.hexdigest()
        return [
            EncodeResult(self.size, digest, stored.size, stored.digest.hexdigest())
            for stored in self._stored
        ]


def encode_stream(src, dst, *, compression, level=1, key=None, size_hint=-1):
    """Read src (binary file object) to EOF, write the stored form to dst; EncodeResult."""
    encoder = Encoder([(dst, key)], compression=compression, level=level, size_hint=size_hint)
    read = src.read
    while True:
        block = read(CHUNK)
        if not block:
            break
        encoder.write(block)
    return encoder.finish()[0]


def decode_stream(src, dst, *, compression, key=None, encrypted=None):
    """Stored form from src -> plain content to dst; returns (size, sha256) of the content.

    encrypted=None: decide by key (a key means the object must be encrypted)."""
    if encrypted is None:
        encrypted = key is not None
    if encrypted and key is None:
        raise BackupError("object is encrypted but no encryption key is configured")
    decomp = _decompressor(compression)
    digest = hashlib.sha256()
    size = 0
    if encrypted:
        pieces = _decrypt_records(src, key)
    else:
        if key is None:
            head = src.read(8)
            if head == MAGIC:
                raise BackupError("object is encrypted but no encryption key was given")
            pieces = _chain(head, iter(lambda: src.read(CHUNK), b""))
        else:
            pieces = iter(lambda: src.read(CHUNK), b"")
    try:
        for piece in pieces:
            if not piece:
                continue
            out = decomp.decompress(piece)
            if out:
                digest.update(out)
                dst.write(out)
                size += len(out)
    except BackupError:
        raise
    except Exception as err:  # lz4 / zstd raise their own types on corrupt input
        raise BackupError(f"stored object is corrupt: {compression} decompression failed") from err
    if decomp.eof is False:
        raise BackupError(f"stored object is truncated: {compression} stream is incomplete")
    return size, digest.hexdigest()


def _chain(first, rest):
    if first:
        yield first
    yield from rest


# ---- files and bytes -------------------------------------------------------------------------


def _temp_beside(path):
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    return fd, tmp


def encode_file(src, dst, *, compression, level=1, key=None, fsync=False):
    """Encode file src into dst (written through a temp file + rename). EncodeResult."""
    try:
        size_hint = os.path.getsize(src)
        fin = open(src, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise BackupError(f"cannot read {src}: {err.strerror}") from None
    fd, tmp = _temp_beside(dst)
    try:
        with fin, os.fdopen(fd, "wb", buffering=CHUNK) as fout:
            result = encode_stream(
                fin, fout, compression=compression, level=level, key=key, size_hint=size_hint
            )
            if fsync:
                fout.flush()
                os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        _unlink(tmp)
        raise
    return result


def decode_file(
    src,
    dst,
    *,
    compression,
    key=None,
    expect_sha256=None,
    expect_size=None,
    encrypted=None,
    mode=0o600,
    fsync=False,
):
    """Decode stored file src into dst (temp + rename); verify size / sha256 when given.

    Returns (size, sha256) of the content. On any failure dst is left untouched."""
    try:
        fin = open(src, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise BackupError(f"cannot read {src}: {err.strerror}") from None
    try:
        fd, tmp = _temp_beside(dst)
    except OSError as err:
        fin.close()
        raise BackupError(f"cannot write {dst}: {err.strerror}") from None
    try:
        with fin, os.fdopen(fd, "wb", buffering=CHUNK) as fout:
            size, digest = decode_stream(
                fin, fout, compression=compression, key=key, encrypted=encrypted
            )
            _verify(size, digest, expect_size, expect_sha256, dst)
            if fsync:
                fout.flush()
                os.fsync(fout.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        _unlink(tmp)
        raise
    return size, digest


def _verify(size, digest, expect_size, expect_sha256, what):
    if expect_size is not None and size != expect_size:
        raise BackupError(
            f"checksum mismatch for {what}: size {size} bytes, expected {expect_size}"
        )
    if expect_sha256 and digest != expect_sha256:
        raise BackupError(
            f"checksum mismatch for {what}: sha256 {digest[:16]}..., "
            f"expected {expect_sha256[:16]}..."
        )


def encode_bytes(data, *, compression, level=1, key=None):
    out = io.BytesIO()
    encode_stream(
        io.BytesIO(data), out, compression=compression, level=level, key=key, size_hint=len(data)
    )
    return out.getvalue()


def decode_bytes(data, *, compression, key=None, expect_sha256=None, encrypted=None):
    out = io.BytesIO()
    size, digest = decode_stream(
        io.BytesIO(data), out, compression=compression, key=key, encrypted=encrypted
    )
    _verify(size, digest, None, expect_sha256, "object")
    return out.getvalue()


def _unlink(path):
    with contextlib.suppress(OSError):
        os.unlink(path)
