"""Content-addressed blob store: a blob's name is the SHA-256 of its bytes.

Layout: ``ROOT/ab/cd/abcd…`` (two fan-out levels keep directories small). Writes are atomic: bytes go to a
temporary file in the same directory, are fsynced, renamed into place, and the directory is fsynced, so a
crash leaves either the whole blob or nothing. Writing the same content twice is a no-op. Purging removes
the bytes; whoever referenced the hash keeps it (a tombstone), which is how withdrawn data stops being
served while old Merkle roots still verify.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from ..errors import InvalidInput, NotFound, StorageError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes) -> str:
        """Store ``data``; return its SHA-256 hex digest."""
        return self.put_chunks([data])

    def put_stream(self, stream: BinaryIO) -> str:
        """Store everything read from ``stream`` without holding it in memory; return its digest."""
        return self.put_chunks(iter(lambda: stream.read(_CHUNK), b""))

    def put_chunks(self, chunks: Iterable[bytes]) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            name = digest.hexdigest()
            final = self.path(name)
            if final.exists():
                os.unlink(tmp)
                return name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            return name
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get(self, name: str, *, verify: bool = True) -> bytes:
        """The blob's bytes. With ``verify`` the content is re-hashed; a mismatch is a StorageError."""
        path = self.path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {name} is not in the store (never stored, or purged)") from None
        if verify and hashlib.sha256(data).hexdigest() != name:
            raise StorageError(f"blob {name} is corrupt: its content no longer matches its hash")
        return data

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def purge(self, name: str) -> bool:
        """Delete the bytes of a blob. Returns False if it was already gone."""
        path = self.path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True

    def path(self, name: str) -> Path:
        if not _HEX64.fullmatch(name):
            raise InvalidInput(f"not a blob name: {name!r} (expected 64 lowercase hex digits)", field="blob")
        return self.root / name[:2] / name[2:4] / name


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:  # pragma: no cover - platform specific
        raise StorageError(f"cannot open {path} to sync it: {exc}") from None
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
