"""RFC 6962 / RFC 9162 Merkle tree over SHA-256: the WRITER side.

This module builds trees and proofs for the journal's transparency log.  The
code that *checks* proofs lives in :mod:`royalty.journal.verify` and must not
import from here, so that a single bug cannot hide on both sides.

Hashing (RFC 6962 §2.1, unchanged in RFC 9162 §2.1.1)::

    MTH({})       = SHA-256()
    leaf hash     = SHA-256(0x00 || d)
    interior node = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])),
                    k = largest power of two < n; no padding.

Node addressing.  A :data:`NodeId` ``(level, index)`` names the *perfect*
subtree over leaves ``[index << level, (index + 1) << level)``; level 0 are
leaf hashes.  Only perfect subtrees are ever stored: they never change once
complete, so storage is append-only.  Any other node the RFC recursion needs
("ephemeral" nodes on the right edge of a tree whose size is not a power of
two) is the right fold of a short run of perfect subtrees (see
:func:`range_nodes` and :func:`fold`).

Plans.  ``*_plan`` functions are pure arithmetic, O(log n), and say *which*
stored nodes a result needs; the fetching functions ask storage for all of
them in one batch (one round trip to the database) and fold.  A plan is a list
of groups; each group is a list of NodeIds whose right fold is one hash of the
result (a group of one is a stored node used as is).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Final, TypeAlias

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "NodeId",
    "NodeFetcher",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root_plan",
    "inclusion_plan",
    "consistency_plan",
    "fold",
    "root",
    "inclusion_proof",
    "consistency_proof",
    "CompactRange",
    "MemoryTree",
]

HASH_SIZE: Final[int] = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT: Final[bytes] = hashlib.sha256(b"").digest()
"""MTH({}): the root of the empty tree, SHA-256 of the empty string."""

NodeId: TypeAlias = tuple[int, int]
"""``(level, index)``: the perfect subtree over leaves ``[index << level, (index + 1) << level)``."""

NodeFetcher: TypeAlias = Callable[[Sequence[NodeId]], Mapping[NodeId, bytes]]
"""Batch lookup of stored perfect-subtree hashes; must return every id asked for."""

# Bound once: attribute lookups on the hashlib module cost more than the
# hashing of a 65-byte message does on the hot append path.
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Return SHA-256(0x00 || data), the RFC 6962 hash of a leaf entry."""
    # Concatenating then hashing once beats sha256().update() twice for the
    # small payloads the journal stores.
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return SHA-256(0x01 || left || right), the RFC 6962 interior node hash."""
    return _sha256(b"\x01" + left + right).digest()


# --------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------


def _check_count(name: str, value: int) -> None:
    """Raise unless ``value`` is a non-negative int (bools are refused: a
    ``True`` tree size is always a caller bug)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"{name} must be {HASH_SIZE} bytes, got {len(value)}")


# --------------------------------------------------------------------------
# Plans: which stored perfect subtrees a result needs (pure, O(log n))
# --------------------------------------------------------------------------


def range_nodes(begin: int, end: int) -> list[NodeId]:
    """Decompose leaves ``[begin, end)`` into maximal aligned perfect subtrees.

    Returns the NodeIds left to right; they tile the range exactly, and each is
    the largest aligned perfect subtree that starts where the previous one
    ended and fits before ``end``.

    When ``begin`` is the start of an RFC 6962 split (``[begin, end)`` is the
    right part ``D[k:n]`` of some split, or ``begin == 0``), the result is the
    binary decomposition of ``end - begin``, largest subtree first, and
    ``MTH(D[begin:end]) == fold(hashes of the result)``: the RFC recursion
    peels off the largest power of two each time, which is exactly that.

    Raises ValueError if ``begin < 0`` or ``end < begin``.
    """
    _check_count("begin", begin)
    _check_count("end", end)
    if end < begin:
        raise ValueError(f"range end {end} is before its begin {begin}")
    out: list[NodeId] = []
    while begin < end:
        # The largest subtree that fits in what is left ...
        level = (end - begin).bit_length() - 1
        if begin:
            # ... and that ``begin`` is aligned to.
            align = (begin & -begin).bit_length() - 1
            if align < level:
                level = align
        out.append((level, begin >> level))
        begin += 1 << level
    return out


def root_plan(size: int) -> list[NodeId]:
    """NodeIds whose right fold is the root of a tree of ``size`` leaves.

    One node per set bit of ``size`` (largest first); empty for ``size == 0``,
    whose root is :data:`EMPTY_ROOT`.
    """
    return range_nodes(0, size)


def _node_path(level: int, index: int, size: int) -> list[list[NodeId]]:
    """Audit path of the complete perfect node ``(level, index)`` in a tree of
    ``size`` leaves, bottom-up, as groups (see the module docstring).

    For ``level == 0`` this is RFC 6962 ``PATH(index, D[size])``.  The caller
    guarantees ``(index + 1) << level <= size``.
    """
    # ``last`` is the node at this level that holds the tree's last leaf.
    # Walking up, ``index`` and ``last`` share an ancestor exactly from the
    # level of their highest differing bit, ``inner`` levels up.  Below that,
    # the path runs inside a perfect subtree; above it, the node lies on the
    # tree's right border and its only siblings are the perfect subtrees to
    # its left (one per set bit of what remains of ``index``).
    last = (size - 1) >> level
    inner = (index ^ last).bit_length()
    groups: list[list[NodeId]] = []
    for shift in range(inner - 1):
        # Inside the perfect subtree: every sibling is complete (left or right).
        groups.append([(level + shift, (index >> shift) ^ 1)])
    if inner:
        # The topmost inner sibling is on the right (its bit is 0 in ``index``
        # and 1 in ``last``) and holds the last leaf, so it may be incomplete:
        # it is then the ephemeral node MTH(D[begin:size]), a right part of an
        # RFC split, which range_nodes folds correctly.
        shift = inner - 1
        lvl = level + shift
        sibling = (index >> shift) ^ 1
        begin = sibling << lvl
        if begin + (1 << lvl) <= size:
            groups.append([(lvl, sibling)])
        else:
            groups.append(range_nodes(begin, size))
    rest = index >> inner
    lvl = level + inner
    while rest:
        if rest & 1:
            groups.append([(lvl, rest ^ 1)])
        rest >>= 1
        lvl += 1
    return groups


def inclusion_plan(index: int, size: int) -> list[list[NodeId]]:
    """RFC 6962 ``PATH(index, D[size])`` as groups, bottom-up.

    Proof element *i* is ``fold`` of the hashes of group *i*.  At most
    ``ceil(log2(size))`` groups.  Raises ValueError unless ``0 <= index < size``.
    """
    _check_count("index", index)
    _check_count("size", size)
    if index >= size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    return _node_path(0, index, size)


def consistency_plan(old_size: int, new_size: int) -> list[list[NodeId]]:
    """RFC 6962 ``PROOF(old_size, D[new_size])`` (SUBPROOF) as groups.

    Empty when ``old_size == new_size`` or ``old_size == 0`` (nothing to
    prove).  Raises ValueError on negative sizes or ``old_size > new_size``.
    """
    _check_count("old_size", old_size)
    _check_count("new_size", new_size)
    if old_size > new_size:
        raise ValueError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == new_size or old_size == 0:
        return []
    # The old tree's right border ends in the perfect node of size
    # 2**trailing_zeros(old_size) holding leaf old_size - 1.  SUBPROOF is that
    # node's audit path in the new tree, preceded by the node itself unless it
    # is the whole old tree (old_size a power of two: the verifier already has
    # the old root, RFC 6962's SUBPROOF(m, D[m], true) = {}).
    level = (old_size & -old_size).bit_length() - 1
    index = (old_size - 1) >> level
    path = _node_path(level, index, new_size)
    if index:
        path.insert(0, [(level, index)])
    return path


def fold(hashes: Sequence[bytes]) -> bytes:
    """Right fold with node_hash: ``node_hash(h0, node_hash(h1, ... node_hash(h[-2], h[-1])))``.

    A single hash folds to itself.  Raises ValueError on an empty sequence
    (a plan group is never empty; an empty one would be a bug, not EMPTY_ROOT).
    """
    n = len(hashes)
    if n == 0:
        raise ValueError("cannot fold an empty sequence of hashes")
    acc = hashes[n - 1]
    for i in range(n - 2, -1, -1):
        acc = _sha256(b"\x01" + hashes[i] + acc).digest()
    return acc


# --------------------------------------------------------------------------
# Fetching: resolve a plan against storage in one batch
# --------------------------------------------------------------------------


def _resolve(groups: list[list[NodeId]], fetch: NodeFetcher) -> list[bytes]:
    """Fetch every node of ``groups`` in one call and fold each group."""
    if not groups:
        # Nothing to look up: do not cost the caller a storage round trip.
        return []
    # dict.fromkeys dedupes while keeping order (plans have no duplicates
    # today, but the one-call contract must not depend on that); chain and
    # fromkeys run in C, which matters on the proof-serving path.
    ids = list(dict.fromkeys(chain.from_iterable(groups)))
    got = fetch(ids)
    out: list[bytes] = []
    node: NodeId | None = None
    try:
        for group in groups:
            if len(group) == 1:
                # The common case: a stored node used as is.
                node = group[0]
                h = got[node]
                if len(h) != HASH_SIZE:
                    raise ValueError(f"stored hash for node {node!r} is {len(h)} bytes, not {HASH_SIZE}")
                out.append(h)
                continue
            hashes = []
            for node in group:
                h = got[node]
                # Checked before folding: a short hash would vanish into a
                # well-formed 32-byte fold.
                if len(h) != HASH_SIZE:
                    raise ValueError(f"stored hash for node {node!r} is {len(h)} bytes, not {HASH_SIZE}")
                hashes.append(h)
            out.append(fold(hashes))
    except KeyError:
        raise KeyError(f"node fetcher did not return node {node!r}") from None
    return out


def root(size: int, fetch: NodeFetcher) -> bytes:
    """MTH of the first ``size`` leaves; :data:`EMPTY_ROOT` for ``size == 0``.

    Calls ``fetch`` at most once (not at all for size 0).
    """
    _check_count("size", size)
    if size == 0:
        return EMPTY_ROOT
    (result,) = _resolve([root_plan(size)], fetch)
    return result


def inclusion_proof(index: int, size: int, fetch: NodeFetcher) -> list[bytes]:
    """RFC 6962 audit path of leaf ``index`` in the tree of ``size`` leaves.

    Calls ``fetch`` once with every node needed (none for ``size == 1``, whose
    proof is empty).  Raises ValueError unless ``0 <= index < size``.
    """
    return _resolve(inclusion_plan(index, size), fetch)


def consistency_proof(old_size: int, new_size: int, fetch: NodeFetcher) -> list[bytes]:
    """RFC 6962 consistency proof from ``old_size`` to ``new_size``.

    ``[]`` (and no fetch) when ``old_size == new_size`` or ``old_size == 0``;
    otherwise one call to ``fetch``.  Raises ValueError on negative sizes or
    ``old_size > new_size``.
    """
    return _resolve(consistency_plan(old_size, new_size), fetch)


# --------------------------------------------------------------------------
# CompactRange: O(log n) writer state
# --------------------------------------------------------------------------


class CompactRange:
    """Right border of an append-only tree: one perfect-subtree hash per set bit of ``size``.

    Used by the journal writer: O(log n) state, loaded from storage at
    start-up with :meth:`load`, then advanced with :meth:`append`, which
    returns the perfect nodes to persist.
    """

    __slots__ = ("_size", "_hashes")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        """Build from ``size`` and the border hashes, largest subtree first
        (the order of ``range_nodes(0, size)``).  The default is the empty tree."""
        _check_count("size", size)
        border = [bytes(h) for h in hashes]
        if len(border) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} has {size.bit_count()} border hashes, got {len(border)}"
            )
        for i, h in enumerate(border):
            _check_hash(f"border hash {i}", h)
        self._size = size
        # Largest subtree first, so the lowest level (the one append merges
        # into) is at the end of the list, where pop/append are O(1).
        self._hashes = border

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @classmethod
    def load(cls, size: int, fetch: NodeFetcher) -> CompactRange:
        """Load the border of a stored tree of ``size`` leaves with one call to
        ``fetch`` (ids ``range_nodes(0, size)``; no call for size 0)."""
        _check_count("size", size)
        ids = range_nodes(0, size)
        if not ids:
            return cls()
        got = fetch(ids)
        try:
            hashes = [got[node] for node in ids]
        except KeyError as exc:
            raise KeyError(f"node fetcher did not return node {exc.args[0]!r}") from None
        return cls(size, hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf given as its LEAF HASH (not the entry data).

        Returns every perfect node completed by this leaf as ``(level, index,
        hash)``, level >= 1, in creation order (increasing level).  The leaf
        itself (level 0) is not returned: the caller stores leaf hashes with
        the events.  Raises ValueError if ``leaf`` is not 32 bytes.
        """
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
        size = self._size
        self._size = size + 1
        hashes = self._hashes
        if not size & 1:
            # Even size (half of all appends): no merge, nothing new to store.
            hashes.append(leaf)
            return []
        # Binary increment: every trailing one bit of ``size`` is a border
        # subtree of the same level as the running hash; merge and carry.
        new: list[tuple[int, int, bytes]] = []
        h = leaf
        level = 0
        rest = size
        while rest & 1:
            h = _sha256(b"\x01" + hashes.pop() + h).digest()
            level += 1
            rest >>= 1
            # The node ends at leaf ``size`` (inclusive); its index at this
            # level is size >> level, which is ``rest`` after the shift.
            new.append((level, rest, h))
        hashes.append(h)
        return new

    def root(self) -> bytes:
        """MTH of the tree so far (the right fold of the border); EMPTY_ROOT if empty."""
        hashes = self._hashes
        n = len(hashes)
        if n == 0:
            return EMPTY_ROOT
        acc = hashes[n - 1]
        for i in range(n - 2, -1, -1):
            acc = _sha256(b"\x01" + hashes[i] + acc).digest()
        return acc

    def copy(self) -> CompactRange:
        """An independent copy (appending to one does not affect the other)."""
        other = CompactRange.__new__(CompactRange)
        other._size = self._size
        other._hashes = self._hashes.copy()
        return other

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"


# --------------------------------------------------------------------------
# MemoryTree: every perfect node in a dict
# --------------------------------------------------------------------------


class MemoryTree:
    """All perfect-subtree hashes in a dict; for tests, small trees and proof
    generation in memory.  :meth:`fetch` is a :data:`NodeFetcher`, and the tree
    can answer for any size up to the number of leaves appended."""

    def __init__(self, leaves_data: Iterable[bytes] = ()) -> None:
        self._nodes: dict[NodeId, bytes] = {}
        self._border = CompactRange()
        for data in leaves_data:
            self.append(data)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._border.size

    def append(self, data: bytes) -> None:
        """Append one entry: ``data`` is hashed as a leaf."""
        nodes = self._nodes
        h = leaf_hash(data)
        nodes[(0, self._border.size)] = h
        for level, index, node in self._border.append(h):
            nodes[(level, index)] = node

    def fetch(self, ids: Sequence[NodeId]) -> dict[NodeId, bytes]:
        """NodeFetcher over the stored nodes; raises KeyError naming a missing id."""
        nodes = self._nodes
        out: dict[NodeId, bytes] = {}
        for node in ids:
            try:
                out[node] = nodes[node]
            except KeyError:
                raise KeyError(f"no stored node {node!r} (tree size {self.size})") from None
        return out

    def _size_arg(self, name: str, size: int | None) -> int:
        if size is None:
            return self.size
        _check_count(name, size)
        if size > self.size:
            raise ValueError(f"{name} {size} is larger than the tree ({self.size} leaves)")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        return root(self._size_arg("size", size), self.fetch)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of ``size`` leaves (default: all)."""
        return inclusion_proof(index, self._size_arg("size", size), self.fetch)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof from ``old_size`` to ``new_size`` (default: all)."""
        return consistency_proof(old_size, self._size_arg("new_size", new_size), self.fetch)

    def __repr__(self) -> str:
        return f"MemoryTree(size={self.size})"
