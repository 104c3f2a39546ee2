"""Signed checkpoints in the C2SP tlog-checkpoint / signed-note format (writer side).

A checkpoint note is::

    <origin>\\n<tree size>\\n<base64 root hash>\\n
    \\n
    — <key name> <base64(4-byte key hint || 64-byte Ed25519 signature)>\\n

The signature covers the body (the first three lines, each ending in a newline). The key hint is the first four
bytes of SHA-256(key name || "\\n" || 0x01 || public key), 0x01 being the Ed25519 signature type. A verifier key
is written ``<name>+<hint hex>+<base64(0x01 || public key)>``, as in Go's sumdb ``note`` package.

Verification lives in ``journal/audit.py`` and shares no code with this file.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import InsecurePermissions, NodeCorrupt, NodeNotFound

ED25519_TYPE = b"\x01"
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space open every signature line


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    note: str  # the full signed note text

    def to_dict(self) -> dict[str, object]:
        return {"origin": self.origin, "size": self.size, "root": self.root.hex(), "note": self.note}


class Signer:
    """An Ed25519 key with a note key name (the node's origin)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not name or any(c.isspace() for c in name) or "+" in name:
            raise ValueError(f"invalid key name {name!r}: no spaces or '+' allowed")
        self.name = name
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_hint = hashlib.sha256(name.encode() + b"\n" + ED25519_TYPE + self.public_key).digest()[:4]

    @property
    def verifier_key(self) -> str:
        """The public verifier key string anyone can use to check this node's checkpoints."""
        return f"{self.name}+{self.key_hint.hex()}+{base64.b64encode(ED25519_TYPE + self.public_key).decode()}"

    def sign_checkpoint(self, origin: str, size: int, root: bytes) -> Checkpoint:
        body = checkpoint_body(origin, size, root)
        signature = self._key.sign(body.encode("utf-8"))
        line = f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(self.key_hint + signature).decode()}\n"
        return Checkpoint(origin=origin, size=size, root=root, note=f"{body}\n{line}")


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    if not origin or "\n" in origin:
        raise ValueError("checkpoint origin must be one non-empty line")
    if size < 0 or len(root) != 32:
        raise ValueError("checkpoint needs a size >= 0 and a 32-byte root")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


# --- the node's key file ----------------------------------------------------------------------------------------


def create_key_file(path: Path) -> Ed25519PrivateKey:
    """Generate a key and write it as PKCS#8 PEM, readable by the owner only (mode 0600) from the first byte."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key


def load_key_file(path: Path) -> Ed25519PrivateKey:
    """Load the node key, refusing one that others can read or that is damaged."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise NodeNotFound(f"the node signing key {path} is missing; restore it from backup") from None
    if mode & 0o077:
        raise InsecurePermissions(
            f"the node signing key {path} has mode {mode:04o}, readable by others; run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise NodeCorrupt(f"the node signing key {path} is corrupt (not a PEM Ed25519 key); restore it from backup") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise NodeCorrupt(f"the node signing key {path} is not an Ed25519 key")
    return key
