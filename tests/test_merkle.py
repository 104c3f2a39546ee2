"""Tests for royalty.journal.merkle (writer) and royalty.journal.verify (verifier).

Everything is checked against a slow, obvious reference written here straight
from RFC 6962 §2.1.1-2.1.2 (recursive MTH, PATH, PROOF/SUBPROOF), against the
RFC's worked example, and against the transparency-dev/merkle known answers.
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from royalty.journal import merkle
from royalty.journal.merkle import CompactRange, MemoryTree
from royalty.journal.verify import (
    TreeReplayer,
    hash_children,
    hash_leaf,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------
# Reference implementation: RFC 6962 §2.1.1-2.1.2, literally.  Slow on purpose.
# --------------------------------------------------------------------------


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + d[0])
    k = _split(n)
    return _sha(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:n])]
    return ref_path(m - k, d[k:n]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _split(n)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:n])]
    return ref_subproof(m - k, d[k:n], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


def ref_path_sides(m: int, n: int) -> list[str]:
    """Which side each PATH(m, D[n]) element is on, bottom-up ('L' or 'R').

    Two sizes with the same sides for leaf m give the same verifier
    computation, so RFC 9162 cannot tell them apart (see the size mutation).
    """
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return ref_path_sides(m, k) + ["R"]
    return ref_path_sides(m - k, n - k) + ["L"]


def data_for(i: int) -> bytes:
    """Distinct leaf contents of varied lengths; leaf 0 is the empty string."""
    if i == 0:
        return b""
    return i.to_bytes(2, "big") + bytes((i * 7 + j) & 0xFF for j in range(i % 11))


LEAVES_64 = [data_for(i) for i in range(64)]
TREE_64 = MemoryTree(LEAVES_64)

# --------------------------------------------------------------------------
# Known answers: transparency-dev/merkle testonly/constants.go
# --------------------------------------------------------------------------

KAT_LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
KAT_ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]


def test_hash_primitives() -> None:
    assert merkle.HASH_SIZE == 32
    assert merkle.EMPTY_ROOT == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    a, b = _sha(b"a"), _sha(b"b")
    for data in (b"", b"\x00", b"hello", bytes(range(256))):
        assert merkle.leaf_hash(data) == _sha(b"\x00" + data) == hash_leaf(data)
    assert merkle.node_hash(a, b) == _sha(b"\x01" + a + b) == hash_children(a, b)
    assert merkle.node_hash(a, b) != merkle.node_hash(b, a)
    # Domain separation: a leaf is never confused with a node over the same bytes.
    assert merkle.leaf_hash(a + b) != merkle.node_hash(a, b)


@pytest.mark.parametrize("size", range(9))
def test_known_answer_roots(size: int) -> None:
    expected = KAT_ROOTS[size]
    d = KAT_LEAVES[:size]
    assert ref_mth(d) == expected
    tree = MemoryTree(d)
    assert tree.size == size
    assert tree.root() == expected
    assert merkle.root(size, MemoryTree(KAT_LEAVES).fetch) == expected
    assert MemoryTree(KAT_LEAVES).root(size) == expected
    cr = CompactRange()
    rp = TreeReplayer()
    for leaf in d:
        cr.append(merkle.leaf_hash(leaf))
        rp.push(hash_leaf(leaf))
    assert cr.size == rp.size == size
    assert cr.root() == expected
    assert rp.root() == expected
    assert CompactRange.load(size, MemoryTree(KAT_LEAVES).fetch).root() == expected


# --------------------------------------------------------------------------
# RFC 6962 §2.1.3 worked example (7 leaves)
#
#             hash
#            /    \
#           k      l
#          / \    / \
#         g   h  i   j
#        / \ / \ / \  |
#        a b c d e f  d6
# --------------------------------------------------------------------------

RFC_D = [f"d{i}".encode() for i in range(7)]


def _rfc_nodes() -> dict[str, bytes]:
    lh = [_sha(b"\x00" + x) for x in RFC_D]
    a, b, c, d, e, f, j = lh
    g = _sha(b"\x01" + a + b)
    h = _sha(b"\x01" + c + d)
    i = _sha(b"\x01" + e + f)
    k = _sha(b"\x01" + g + h)
    l = _sha(b"\x01" + i + j)  # noqa: E741  (the RFC's name)
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f, "g": g, "h": h, "i": i, "j": j, "k": k, "l": l,
            "root": _sha(b"\x01" + k + l)}


@pytest.mark.parametrize(
    ("index", "names"), [(0, "bhl"), (3, "cgl"), (4, "fjk"), (6, "ik")]
)
def test_rfc6962_audit_paths(index: int, names: str) -> None:
    nodes = _rfc_nodes()
    expected = [nodes[x] for x in names]
    tree = MemoryTree(RFC_D)
    assert tree.root() == nodes["root"] == ref_mth(RFC_D)
    assert ref_path(index, RFC_D) == expected
    assert tree.inclusion_proof(index) == expected
    assert verify_inclusion(nodes["abcdefj"[index]], index, 7, expected, nodes["root"])


@pytest.mark.parametrize(("old_size", "names"), [(3, "cdgl"), (4, "l"), (6, "ijk")])
def test_rfc6962_consistency_proofs(old_size: int, names: str) -> None:
    nodes = _rfc_nodes()
    expected = [nodes[x] for x in names]
    tree = MemoryTree(RFC_D)
    assert ref_proof(old_size, RFC_D) == expected
    assert tree.consistency_proof(old_size) == expected
    old_root = ref_mth(RFC_D[:old_size])
    assert verify_consistency(old_size, 7, old_root, nodes["root"], expected)


def test_rfc_example_plans_name_the_right_nodes() -> None:
    # Same example, at the level of node ids: i = (1, 2), k = (2, 0), l = [(1, 2), (0, 6)].
    assert merkle.inclusion_plan(6, 7) == [[(1, 2)], [(2, 0)]]
    assert merkle.inclusion_plan(0, 7) == [[(0, 1)], [(1, 1)], [(1, 2), (0, 6)]]
    assert merkle.consistency_plan(3, 7) == [[(0, 2)], [(0, 3)], [(1, 0)], [(1, 2), (0, 6)]]
    assert merkle.consistency_plan(6, 7) == [[(1, 2)], [(0, 6)], [(2, 0)]]
    assert merkle.root_plan(7) == [(2, 0), (1, 2), (0, 6)]


# --------------------------------------------------------------------------
# Exhaustive small trees against the reference
# --------------------------------------------------------------------------


def test_every_inclusion_proof_up_to_64() -> None:
    for n in range(1, 65):
        d = LEAVES_64[:n]
        root = ref_mth(d)
        assert TREE_64.root(n) == root, n
        for m in range(n):
            proof = TREE_64.inclusion_proof(m, n)
            assert proof == ref_path(m, d), (m, n)
            assert verify_inclusion(hash_leaf(d[m]), m, n, proof, root), (m, n)
            # The proof is short: at most ceil(log2 n) hashes.
            assert len(proof) <= (n - 1).bit_length()


def test_every_consistency_proof_up_to_64() -> None:
    roots = [ref_mth(LEAVES_64[:n]) for n in range(65)]
    for n in range(1, 65):
        d = LEAVES_64[:n]
        for m in range(1, n + 1):
            proof = TREE_64.consistency_proof(m, n)
            assert proof == ref_proof(m, d), (m, n)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            assert len(proof) <= (n - 1).bit_length() + 1
            if m < n:
                assert proof, (m, n)
                # ... and it does not prove consistency with a different old tree.
                assert not verify_consistency(m, n, roots[m - 1], roots[n], proof), (m, n)


def test_consistency_edge_cases() -> None:
    empty = merkle.EMPTY_ROOT
    for n in range(0, 65):
        root_n = TREE_64.root(n)
        assert TREE_64.consistency_proof(n, n) == []
        assert TREE_64.consistency_proof(0, n) == []
        assert verify_consistency(n, n, root_n, root_n, [])
        assert verify_consistency(0, n, empty, root_n, [])
        # Equal sizes: the roots must agree and the proof must be empty.
        assert not verify_consistency(n, n, root_n, _sha(root_n), [])
        assert not verify_consistency(n, n, root_n, root_n, [root_n])
        # Empty old tree: the proof must be empty and the old root is SHA-256("").
        assert not verify_consistency(0, n, empty, root_n, [root_n])
        assert not verify_consistency(0, n, root_n if n else _sha(b"x"), root_n, [])
    # Any new root is consistent with the empty tree.
    assert verify_consistency(0, 5, empty, _sha(b"anything"), [])


def test_range_nodes() -> None:
    assert merkle.range_nodes(0, 0) == []
    assert merkle.range_nodes(5, 5) == []
    assert merkle.range_nodes(0, 13) == [(3, 0), (2, 2), (0, 12)]
    assert merkle.range_nodes(8, 13) == [(2, 2), (0, 12)]
    assert merkle.range_nodes(1, 7) == [(0, 1), (1, 1), (1, 2), (0, 6)]
    assert merkle.range_nodes(0, 1 << 40) == [(40, 0)]
    d = [data_for(i) for i in range(130)]
    tree = MemoryTree(d)
    for begin in range(0, 130):
        for end in range(begin, 131):
            nodes = merkle.range_nodes(begin, end)
            # The nodes tile [begin, end) exactly, left to right, and are maximal:
            # no two neighbours could merge into one aligned perfect subtree.
            pos = begin
            for i, (level, index) in enumerate(nodes):
                assert index << level == pos
                pos = (index + 1) << level
                if i:
                    prev_level, prev_index = nodes[i - 1]
                    assert not (prev_level == level and prev_index % 2 == 0 and prev_index + 1 == index)
            assert pos == end
            # Right parts of an RFC split fold to their MTH.
            size = end - begin
            if size and (begin == 0 or begin % (1 << (size - 1).bit_length()) == 0):
                hashes = [tree.fetch([node])[node] for node in nodes]
                assert merkle.fold(hashes) == ref_mth(d[begin:end]), (begin, end)


def test_fold() -> None:
    a, b, c = _sha(b"a"), _sha(b"b"), _sha(b"c")
    assert merkle.fold([a]) == a
    assert merkle.fold([a, b]) == _sha(b"\x01" + a + b)
    assert merkle.fold([a, b, c]) == _sha(b"\x01" + a + _sha(b"\x01" + b + c))
    with pytest.raises(ValueError):
        merkle.fold([])


def test_plans_are_logarithmic_at_scale() -> None:
    n = 10**12 + 12345
    for index in (0, 1, n // 3, n - 2, n - 1):
        plan = merkle.inclusion_plan(index, n)
        assert len(plan) <= (n - 1).bit_length()
        assert sum(len(g) for g in plan) <= 2 * n.bit_length()
    plan = merkle.consistency_plan(n // 2 + 1, n)
    assert len(plan) <= (n - 1).bit_length() + 1
    assert len(merkle.root_plan(n)) == n.bit_count()


class CountingFetch:
    def __init__(self, tree: MemoryTree) -> None:
        self.tree = tree
        self.calls: list[list[merkle.NodeId]] = []

    def __call__(self, ids: Sequence[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        ids = list(ids)
        self.calls.append(ids)
        return self.tree.fetch(ids)


def test_proofs_fetch_once_without_duplicates() -> None:
    tree = MemoryTree(data_for(i) for i in range(100))
    for n in (1, 2, 3, 7, 64, 65, 99, 100):
        for m in range(n):
            fetch = CountingFetch(tree)
            proof = merkle.inclusion_proof(m, n, fetch)
            assert proof == tree.inclusion_proof(m, n)
            if n == 1:
                assert fetch.calls == []  # empty proof: no round trip
            else:
                assert len(fetch.calls) == 1
                ids = fetch.calls[0]
                assert len(ids) == len(set(ids))
                # Only perfect subtrees inside the tree are ever asked for.
                assert all((i + 1) << lv <= n for lv, i in ids)
        for m in range(0, n + 1):
            fetch = CountingFetch(tree)
            proof = merkle.consistency_proof(m, n, fetch)
            assert len(fetch.calls) == (0 if m in (0, n) else 1)
            if fetch.calls:
                assert len(fetch.calls[0]) == len(set(fetch.calls[0]))
        fetch = CountingFetch(tree)
        assert merkle.root(n, fetch) == tree.root(n)
        assert fetch.calls == [merkle.root_plan(n)]
    fetch = CountingFetch(tree)
    assert merkle.root(0, fetch) == merkle.EMPTY_ROOT
    assert fetch.calls == []


def test_fetch_errors() -> None:
    tree = MemoryTree([b"x"] * 5)
    with pytest.raises(KeyError, match=r"\(3, 0\)"):
        tree.fetch([(3, 0)])
    with pytest.raises(KeyError):
        merkle.root(8, tree.fetch)
    with pytest.raises(KeyError, match="did not return"):
        merkle.inclusion_proof(0, 5, lambda ids: {})
    with pytest.raises(ValueError, match="bytes"):
        merkle.inclusion_proof(0, 5, lambda ids: {i: b"short" for i in ids})


# --------------------------------------------------------------------------
# CompactRange and TreeReplayer
# --------------------------------------------------------------------------


def _expected_new_nodes(d: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
    """Perfect nodes (level >= 1) that exist for len(d) leaves but not for one fewer."""
    n = len(d)
    out = []
    level = 1
    while n % (1 << level) == 0:
        index = (n >> level) - 1
        out.append((level, index, ref_mth(d[index << level : n])))
        level += 1
    return out


def test_compact_range_appends_against_reference() -> None:
    d = [data_for(i) for i in range(200)]
    cr = CompactRange()
    rp = TreeReplayer()
    assert cr.root() == rp.root() == merkle.EMPTY_ROOT
    for n in range(1, 201):
        new = cr.append(merkle.leaf_hash(d[n - 1]))
        replayed = rp.push(hash_leaf(d[n - 1]))
        expected = _expected_new_nodes(d[:n])
        assert new == expected, n
        assert replayed == expected, n
        assert cr.size == rp.size == n
        root = ref_mth(d[:n])
        assert cr.root() == root, n
        assert rp.root() == root, n


def test_compact_range_load_at_every_size() -> None:
    d = [data_for(i) for i in range(200)]
    tree = MemoryTree(d)
    states = [CompactRange()]
    for leaf in d:
        cr = states[-1].copy()
        cr.append(merkle.leaf_hash(leaf))
        states.append(cr)
    # copy() is independent: the earlier states were not advanced by later appends.
    assert [s.size for s in states] == list(range(201))
    for size in range(201):
        fetch = CountingFetch(tree)
        loaded = CompactRange.load(size, fetch)
        assert fetch.calls == ([merkle.range_nodes(0, size)] if size else [])
        assert loaded.size == size
        assert loaded.root() == states[size].root() == ref_mth(d[:size])
        # The loaded border continues exactly like the one built by appending.
        grown = states[size].copy()
        for i in range(size, min(size + 9, 200)):
            lh = merkle.leaf_hash(d[i])
            assert loaded.append(lh) == grown.append(lh), (size, i)
            assert loaded.root() == grown.root()
        assert states[size].size == size


def test_compact_range_nodes_match_memory_tree() -> None:
    # Every node append reports is exactly the node MemoryTree stores under that id.
    tree = MemoryTree(data_for(i) for i in range(300))
    cr = CompactRange()
    seen: set[merkle.NodeId] = set()
    for i in range(300):
        for level, index, h in cr.append(merkle.leaf_hash(data_for(i))):
            assert tree.fetch([(level, index)])[(level, index)] == h
            assert (level, index) not in seen
            seen.add((level, index))
    assert len(seen) == 300 - 300 .bit_count()  # a tree of n leaves has n - popcount(n) perfect interior nodes


def test_compact_range_and_replayer_reject_bad_leaves() -> None:
    cr = CompactRange()
    rp = TreeReplayer()
    for bad in (b"", b"\x00" * 31, b"\x00" * 33):
        with pytest.raises(ValueError):
            cr.append(bad)
        with pytest.raises(ValueError):
            rp.push(bad)
    assert cr.size == rp.size == 0
    with pytest.raises(ValueError):
        CompactRange(3, [_sha(b"a")])  # size 3 needs two border hashes
    with pytest.raises(ValueError):
        CompactRange(1, [b"short"])
    with pytest.raises(ValueError):
        CompactRange(-1, [])


# --------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------


def test_inclusion_rejections() -> None:
    n = 23
    d = [data_for(i) for i in range(40)]
    tree = MemoryTree(d)
    root = tree.root(n)
    for m in (0, 5, 16, 21, 22):
        lh = hash_leaf(d[m])
        proof = tree.inclusion_proof(m, n)
        assert verify_inclusion(lh, m, n, proof, root)
        # Wrong sizes that change the leaf's root-to-leaf path (sizes that keep
        # it cannot be told apart: see test_inclusion_proof_fixes_path_not_size).
        wrong_sizes = [
            (lh, m, s, proof, root)
            for s in (n - 1, n + 1, n + 9, n * 2, n // 2)
            if s <= m or ref_path_sides(m, s) != ref_path_sides(m, n)
        ]
        assert len(wrong_sizes) >= 2
        bad_calls = [
            (lh, m + 1, n, proof, root),  # wrong index
            (lh, m ^ 1, n, proof, root),
            *wrong_sizes,
            (lh, m, n, proof, tree.root(n + 1)),  # wrong root
            (lh, m, n, proof, merkle.EMPTY_ROOT),
            (lh, m, n, proof[:-1], root),  # truncated
            (lh, m, n, proof + [root], root),  # extended
            (lh, m, n, [root] + proof, root),
            (lh, m, n, [], root),
            (lh, m, n, list(reversed(proof)), root),  # swapped elements
            (lh, m, n, [proof[1], proof[0], *proof[2:]], root),
            (hash_leaf(d[m + 1]), m, n, proof, root),  # proof for another leaf
            (lh, (m + 1) % n, n, tree.inclusion_proof((m + 1) % n, n), root),
            (lh, m, n, tree.inclusion_proof((m + 1) % n, n), root),
            (hash_leaf(d[m] + b"\x00"), m, n, proof, root),
            (lh[:31], m, n, proof, root),  # 31/33-byte hashes
            (lh + b"\x00", m, n, proof, root),
            (lh, m, n, proof, root[:31]),
            (lh, m, n, proof, root + b"\x00"),
            (lh, m, n, [proof[0][:31], *proof[1:]], root),
            (lh, m, n, [proof[0] + b"\x00", *proof[1:]], root),
            (lh, -1, n, proof, root),  # negative / out-of-range
            (lh, m, -n, proof, root),
            (lh, m, 0, proof, root),
            (lh, n, n, proof, root),
            (lh, m, m, proof, root),
            (lh, m, 2**64 + n, proof, root),
            (lh, m + 2**64, n, proof, root),
            (lh, float(m), n, proof, root),  # wrong types
            (lh, m, str(n), proof, root),
            (lh, True, n, proof, root),
            (None, m, n, proof, root),
            (lh, m, n, None, root),
            (lh, m, n, b"".join(proof), root),
            (lh, m, n, [None, *proof[1:]], root),
            (lh.hex(), m, n, proof, root),
            (lh, m, n, proof, None),
        ]
        for i, args in enumerate(bad_calls):
            assert verify_inclusion(*args) is False, (m, i)  # type: ignore[arg-type]
    # A single-leaf tree: the proof is empty and the root is the leaf hash.
    lh = hash_leaf(b"only")
    assert verify_inclusion(lh, 0, 1, [], lh)
    assert not verify_inclusion(lh, 0, 1, [lh], lh)
    assert not verify_inclusion(lh, 0, 1, [], hash_leaf(b"other"))
    assert not verify_inclusion(lh, 1, 1, [], lh)


def test_inclusion_proof_fixes_path_not_size() -> None:
    # Inherent to RFC 9162: the verifier only learns the shape of the leaf's
    # path from the size.  Leaf 0 has the path R,R,R,R,R in every tree of 17 to
    # 32 leaves, so a proof for 23 leaves also "verifies" against size 24 with
    # the same root.  Sizes are bound to roots by signed checkpoints, not proofs.
    d = [data_for(i) for i in range(32)]
    tree = MemoryTree(d)
    proof, root = tree.inclusion_proof(0, 23), tree.root(23)
    assert ref_path_sides(0, 23) == ref_path_sides(0, 24) == ["R"] * 5
    assert verify_inclusion(hash_leaf(d[0]), 0, 24, proof, root)
    assert ref_path_sides(0, 16) != ref_path_sides(0, 23)
    assert not verify_inclusion(hash_leaf(d[0]), 0, 16, proof, root)
    # The same for the new size of a consistency proof (the path of leaf m - 1).
    cproof = tree.consistency_proof(5, 23)
    assert ref_path_sides(4, 23) == ref_path_sides(4, 24)
    assert verify_consistency(5, 24, tree.root(5), root, cproof)
    # But a real tree of the other size has a different root, which is rejected.
    assert not verify_inclusion(hash_leaf(d[0]), 0, 24, proof, tree.root(24))
    assert not verify_consistency(5, 24, tree.root(5), tree.root(24), cproof)


def test_inclusion_requires_the_rfc9162_inner_shift() -> None:
    # Leaf 6 of 7 (RFC path [i, k]) and the last leaf of 5 and 21 leaves sit on
    # the right edge where fn == sn: a verifier without the inner shift loop of
    # RFC 9162 §2.1.3.2 step 4.b.2 rejects these valid proofs.
    for m, n in ((6, 7), (4, 5), (20, 21), (12, 13)):
        d = LEAVES_64[:n]
        assert verify_inclusion(hash_leaf(d[m]), m, n, ref_path(m, d), ref_mth(d))


def test_consistency_rejections() -> None:
    d = [data_for(i) for i in range(40)]
    tree = MemoryTree(d)
    roots = [tree.root(n) for n in range(41)]
    for m, n in ((1, 2), (3, 7), (4, 7), (6, 7), (5, 23), (16, 23), (22, 23), (7, 40)):
        proof = tree.consistency_proof(m, n)
        assert verify_consistency(m, n, roots[m], roots[n], proof)
        bad_calls = [
            (m + 1, n, roots[m], roots[n], proof),  # wrong sizes
            (m - 1, n, roots[m], roots[n], proof),
            *[
                (m, s, roots[m], roots[n], proof)
                for s in (n - 1, n + 1, n + 9, n * 2)
                if s <= m or ref_path_sides(m - 1, s) != ref_path_sides(m - 1, n)
            ],
            (n, m, roots[n], roots[m], proof),  # old > new
            (m, n, roots[m - 1], roots[n], proof),  # wrong roots
            (m, n, roots[m], roots[n - 1], proof),
            (m, n, roots[n], roots[m], proof),
            (m, n, roots[m], roots[n], proof[:-1]),  # truncated / extended
            (m, n, roots[m], roots[n], proof + [roots[n]]),
            (m, n, roots[m], roots[n], [roots[m]] + proof),
            (m, n, roots[m], roots[n], []),
            (m, n, roots[m], roots[n], list(reversed(proof)) if len(proof) > 1 else [roots[0]]),
            (m, n, roots[m][:31], roots[n], proof),  # 31/33-byte hashes
            (m, n, roots[m], roots[n] + b"\x00", proof),
            (m, n, roots[m], roots[n], [proof[0][:31], *proof[1:]]),
            (m, n, roots[m], roots[n], [proof[0] + b"\x00", *proof[1:]]),
            (-m, n, roots[m], roots[n], proof),  # negative / out-of-range
            (m, -n, roots[m], roots[n], proof),
            (m + 2**64, n, roots[m], roots[n], proof),
            (m, n + 2**64, roots[m], roots[n], proof),
            (float(m), n, roots[m], roots[n], proof),  # wrong types
            (m, n, None, roots[n], proof),
            (m, n, roots[m], roots[n], None),
            (m, n, roots[m], roots[n], b"".join(proof)),
            (m, n, roots[m], roots[n], [None, *proof[1:]]),
        ]
        for i, args in enumerate(bad_calls):
            assert verify_consistency(*args) is False, (m, n, i)  # type: ignore[arg-type]


def test_invalid_arguments_raise_value_error() -> None:
    tree = MemoryTree([b"a", b"b", b"c"])
    value_errors: list[Callable[[], object]] = [
        lambda: merkle.inclusion_plan(3, 3),
        lambda: merkle.inclusion_plan(0, 0),
        lambda: merkle.inclusion_plan(-1, 3),
        lambda: merkle.inclusion_plan(0, -1),
        lambda: merkle.consistency_plan(4, 3),
        lambda: merkle.consistency_plan(-1, 3),
        lambda: merkle.consistency_plan(0, -1),
        lambda: merkle.range_nodes(-1, 3),
        lambda: merkle.range_nodes(4, 3),
        lambda: merkle.root_plan(-1),
        lambda: merkle.root(-1, tree.fetch),
        lambda: merkle.inclusion_proof(5, 3, tree.fetch),
        lambda: merkle.consistency_proof(3, 2, tree.fetch),
        lambda: CompactRange.load(-1, tree.fetch),
        lambda: tree.inclusion_proof(3),
        lambda: tree.inclusion_proof(0, 4),  # larger than the tree
        lambda: tree.inclusion_proof(-1),
        lambda: tree.consistency_proof(4),
        lambda: tree.consistency_proof(1, 4),
        lambda: tree.consistency_proof(-1),
        lambda: tree.root(4),
        lambda: tree.root(-1),
    ]
    for i, call in enumerate(value_errors):
        try:
            call()
        except ValueError:
            continue
        pytest.fail(f"invalid-argument case {i} did not raise ValueError")
    with pytest.raises(ValueError, match="index 3 is not in a tree of size 3"):
        merkle.inclusion_plan(3, 3)
    with pytest.raises(ValueError, match="old size 4 is larger than new size 3"):
        merkle.consistency_plan(4, 3)
    with pytest.raises(TypeError):
        merkle.inclusion_plan(0, 3.0)  # type: ignore[arg-type]


def test_verify_does_not_import_the_writer() -> None:
    # Project rule: the code that verifies must not reuse the code that wrote.
    import royalty.journal.verify as verify_module

    tree = ast.parse(Path(verify_module.__file__).read_text())
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
    assert imported, "expected at least the hashlib import"
    for name in imported:
        assert not name.startswith(".") and not name.startswith("royalty"), name


# --------------------------------------------------------------------------
# Mutation test: 10,000 random single-byte changes, all rejected
# --------------------------------------------------------------------------

MUTATION_SEED = int(os.environ.get("MERKLE_MUTATION_SEED", "6962"))
MUTATIONS = 10_000


def _flip_byte(value: bytes, rng: random.Random) -> bytes:
    out = bytearray(value)
    out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    return bytes(out)


def _flip_int(value: int, rng: random.Random) -> int:
    """Flip one byte of the 8-byte big-endian encoding and decode it again."""
    return int.from_bytes(_flip_byte(value.to_bytes(8, "big"), rng), "big")


def test_random_single_byte_mutations_are_rejected() -> None:
    seed = MUTATION_SEED
    rng = random.Random(seed)
    where = f"MERKLE_MUTATION_SEED={seed}"
    data = [rng.randbytes(rng.randint(1, 40)) for _ in range(300)]
    tree = MemoryTree(data)
    roots = [tree.root(n) for n in range(301)]
    counts: dict[str, int] = {}
    size_flips_indistinguishable = 0
    for trial in range(MUTATIONS):
        n = rng.randint(1, 300)
        if trial % 2 == 0:
            m = rng.randrange(n)
            leaf = data[m]
            proof = tree.inclusion_proof(m, n)
            root = roots[n]
            assert verify_inclusion(hash_leaf(leaf), m, n, proof, root), (where, trial)
            kind = rng.choice(["leaf data", "proof element", "root", "tree size", "leaf index"])
            if kind == "proof element" and not proof:
                kind = "root"
            size = n
            if kind == "leaf data":
                leaf = _flip_byte(leaf, rng)
            elif kind == "proof element":
                j = rng.randrange(len(proof))
                proof = [*proof[:j], _flip_byte(proof[j], rng), *proof[j + 1 :]]
            elif kind == "root":
                root = _flip_byte(root, rng)
            elif kind == "tree size":
                size = _flip_int(n, rng)
            else:
                m = _flip_int(m, rng)
            accepted = verify_inclusion(hash_leaf(leaf), m, size, proof, root)
            if kind == "tree size" and m < size and ref_path_sides(m, size) == ref_path_sides(m, n):
                # RFC 9162 inclusion proofs fix the root-to-leaf path, not the
                # exact size: a size with the same path for this leaf computes
                # the same root, so no verifier can reject it (the size is
                # bound to the root by the signed checkpoint instead).
                assert accepted, (where, trial, m, n, size)
                size_flips_indistinguishable += 1
                continue
            kind = "inclusion: " + kind
        else:
            m = rng.randint(1, n - 1) if n > 1 else 1
            if n == 1:
                n = 2
            proof = tree.consistency_proof(m, n)
            old_root, new_root = roots[m], roots[n]
            assert verify_consistency(m, n, old_root, new_root, proof), (where, trial)
            kind = rng.choice(["old size", "new size", "old root", "new root", "proof element"])
            old_size, new_size = m, n
            if kind == "old size":
                old_size = _flip_int(m, rng)
            elif kind == "new size":
                new_size = _flip_int(n, rng)
            elif kind == "old root":
                old_root = _flip_byte(old_root, rng)
            elif kind == "new root":
                new_root = _flip_byte(new_root, rng)
            else:
                j = rng.randrange(len(proof))
                proof = [*proof[:j], _flip_byte(proof[j], rng), *proof[j + 1 :]]
            accepted = verify_consistency(old_size, new_size, old_root, new_root, proof)
            if kind == "new size" and m < new_size and ref_path_sides(m - 1, new_size) == ref_path_sides(m - 1, n):
                # As for inclusion: the proof is the path of the old tree's last
                # leaf, and this new size gives that leaf the same path.
                assert accepted, (where, trial, m, n, new_size)
                size_flips_indistinguishable += 1
                continue
            kind = "consistency: " + kind
        assert not accepted, f"{where}: trial {trial}: {kind} mutation accepted (n={n}, m={m})"
        counts[kind] = counts.get(kind, 0) + 1
    # Every kind was exercised many times, and size flips were mostly distinguishable.
    assert len(counts) == 10 and min(counts.values()) > 500, (where, counts)
    assert sum(counts.values()) + size_flips_indistinguishable == MUTATIONS
    assert size_flips_indistinguishable < MUTATIONS // 50, (where, size_flips_indistinguishable)
