"""Independent verifier for the journal's transparency log (RFC 9162).

Project rule: the code that verifies must not reuse the code that wrote.  This
module therefore imports nothing from :mod:`royalty.journal.merkle` (nor from
any other ``royalty`` module) and is written in a deliberately different
style:

* hashing uses ``hashlib`` incrementally (``update``), not concatenation;
* proof checks walk the tree size and index bit by bit, exactly as the text of
  RFC 9162 §2.1.3.2 and §2.1.4.2 states (the writer works with subtree
  arithmetic instead);
* :class:`TreeReplayer` keeps an explicit stack of ``(level, hash)`` pairs
  (the writer keeps a list indexed by the set bits of the size).

The predicates ``verify_inclusion`` and ``verify_consistency`` never raise:
any malformed input (wrong types, wrong hash lengths, impossible sizes) is
simply a proof that does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = [
    "hash_leaf",
    "hash_children",
    "verify_inclusion",
    "verify_consistency",
    "TreeReplayer",
]

_DIGEST_LEN = hashlib.sha256().digest_size  # 32
_EMPTY_TREE_ROOT = hashlib.sha256().digest()  # MTH({}) = SHA-256 of nothing


def hash_leaf(data: bytes) -> bytes:
    """SHA-256(0x00 || data) (RFC 9162 §2.1.1)."""
    h = hashlib.sha256()
    h.update(b"\x00")
    h.update(data)
    return h.digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right) (RFC 9162 §2.1.1)."""
    h = hashlib.sha256()
    h.update(b"\x01")
    h.update(left)
    h.update(right)
    return h.digest()


def _is_digest(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == _DIGEST_LEN


def _is_count(value: object) -> bool:
    # bool is an int subclass; a True/False tree size is never meaningful.
    return isinstance(value, int) and not isinstance(value, bool)


def _digest_list(proof: object) -> list[bytes] | None:
    """The proof as a list of 32-byte digests, or None if it is not one."""
    if isinstance(proof, (bytes, bytearray, str)) or not isinstance(proof, Sequence):
        return None
    out: list[bytes] = []
    for element in proof:
        if not _is_digest(element):
            return None
        out.append(bytes(element))
    return out


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(bytes(a), bytes(b))


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True iff ``proof`` shows the leaf with hash ``leaf_hash`` at ``index``
    in the tree of ``size`` leaves whose root is ``root``.

    RFC 9162 §2.1.3.2, step by step.  Never raises; malformed input is False.

    Note (inherent to RFC 9162): an inclusion proof fixes the *shape* of the
    path, not the exact tree size; sizes that put ``index`` on the same
    root-to-leaf path also verify.  The size is bound to the root by the
    signed checkpoint, not by the proof.
    """
    if not (_is_count(index) and _is_count(size)):
        return False
    if not (_is_digest(leaf_hash) and _is_digest(root)):
        return False
    path = _digest_list(proof)
    if path is None:
        return False
    # 1. Fail if leaf_index >= tree_size (also covers size <= 0).
    if index < 0 or index >= size:
        return False
    # 2. fn = leaf_index, sn = tree_size - 1.
    fn = index
    sn = size - 1
    # 3. r = hash.
    r = bytes(leaf_hash)
    # 4. For each value p in the inclusion_path array:
    for p in path:
        # a. If sn is 0, stop and fail (the proof is longer than the path).
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 == 1 or fn == sn:
            # 1. r = HASH(0x01 || p || r)
            r = hash_children(p, r)
            # 2. If LSB(fn) is not set, right-shift both fn and sn equally
            #    until either LSB(fn) is set or fn is 0.  (These are levels
            #    where the node is the last one of its level and has no
            #    right sibling: the RFC tree promotes it unchanged.)
            if fn & 1 == 0:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: r = HASH(0x01 || r || p)
            r = hash_children(r, p)
        # c. Right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Accept iff sn is 0 and r equals root_hash.
    return sn == 0 and _same(r, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff ``proof`` shows that the tree of ``old_size`` leaves with root
    ``old_root`` is a prefix of the tree of ``new_size`` leaves with root
    ``new_root``.

    RFC 9162 §2.1.4.2, step by step, with the edge cases the RFC leaves to the
    caller made explicit:

    * ``old_size > new_size`` or a negative size: False.
    * ``old_size == new_size``: the proof must be empty and the roots equal.
    * ``old_size == 0``: the proof must be empty and ``old_root`` must be the
      empty-tree root SHA-256(""); any (well-formed) ``new_root`` is accepted,
      since the empty tree is a prefix of every tree.

    Never raises; malformed input is False.
    """
    if not (_is_count(old_size) and _is_count(new_size)):
        return False
    if not (_is_digest(old_root) and _is_digest(new_root)):
        return False
    path = _digest_list(proof)
    if path is None:
        return False
    if old_size < 0 or new_size < 0 or old_size > new_size:
        return False
    if old_size == new_size:
        return not path and _same(old_root, new_root)
    if old_size == 0:
        return not path and _same(old_root, _EMPTY_TREE_ROOT)
    # 1. If consistency_path is empty, fail.
    if not path:
        return False
    # 2. If first is an exact power of 2, prepend first_hash.
    if old_size & (old_size - 1) == 0:
        path = [bytes(old_root), *path]
    # 3. fn = first - 1, sn = second - 1.
    fn = old_size - 1
    sn = new_size - 1
    # 4. If LSB(fn) is set, right-shift both until LSB(fn) is not set
    #    (skip the levels where the old tree's last node is a right child:
    #    the proof starts at the smallest complete subtree on its border).
    while fn & 1 == 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = first value of the path.
    fr = path[0]
    sr = path[0]
    # 6. For each subsequent value c:
    for c in path[1:]:
        # a. If sn is 0, stop and fail.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 == 1 or fn == sn:
            # 1. fr = HASH(0x01 || c || fr); sr = HASH(0x01 || c || sr)
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            # 2. If LSB(fn) is not set, right-shift both fn and sn equally
            #    until either LSB(fn) is set or fn is 0.
            if fn & 1 == 0:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: sr = HASH(0x01 || sr || c)  (c is only in the new tree)
            sr = hash_children(sr, c)
        # c. Right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. fr must be the old root, sr the new root, and sn 0.
    return sn == 0 and _same(fr, old_root) and _same(sr, new_root)


class TreeReplayer:
    """Streams leaf hashes in order and recomputes the tree independently of
    merkle.py: keeps its own stack of perfect subtrees as ``(level, hash)``
    pairs, bottom of the stack = leftmost (largest) subtree."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self._count = 0

    @property
    def size(self) -> int:
        """Number of leaf hashes pushed so far."""
        return self._count

    def push(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Push the next LEAF HASH.  Returns the perfect nodes completed by it
        as ``(level, index, hash)`` with level >= 1, in creation order, so the
        caller can compare them with the stored nodes.  Raises ValueError if
        ``leaf_hash`` is not a 32-byte digest (replay input is trusted to be
        well-formed; a bad one is an error, not a verdict)."""
        if not _is_digest(leaf_hash):
            raise ValueError("leaf hash must be a 32-byte digest")
        self._count += 1
        stack = self._stack
        stack.append((0, bytes(leaf_hash)))
        completed: list[tuple[int, int, bytes]] = []
        # Two subtrees of equal height on top of the stack are siblings:
        # merge them into their parent until the heights differ.
        while len(stack) >= 2 and stack[-1][0] == stack[-2][0]:
            height, right = stack.pop()
            _, left = stack.pop()
            parent = (height + 1, hash_children(left, right))
            stack.append(parent)
            # The parent covers the last 2**(height+1) leaves pushed.
            first_leaf = self._count - (1 << parent[0])
            completed.append((parent[0], first_leaf >> parent[0], parent[1]))
        return completed

    def root(self) -> bytes:
        """MTH of the leaves pushed so far (SHA-256("") when none)."""
        if not self._stack:
            return _EMPTY_TREE_ROOT
        # Combine from the top of the stack (smallest, rightmost subtree)
        # down: that is how the RFC split nests the right edge.
        acc: bytes | None = None
        for _, subtree in reversed(self._stack):
            acc = subtree if acc is None else hash_children(subtree, acc)
        assert acc is not None
        return acc
