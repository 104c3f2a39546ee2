"""Signed checkpoints: the C2SP note format written by checkpoint.py, checked by the independent audit.py."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from royalty.errors import InvalidInput, VerificationFailed
from royalty.journal.audit import VerifierKey, open_note
from royalty.journal.checkpoint import Signer

ROOT = hashlib.sha256(b"some tree").digest()
ORIGIN = "example.com/log"


def signer(name: str = ORIGIN, seed: int = 1) -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(hashlib.sha256(bytes([seed])).digest()))


def test_note_format_matches_c2sp() -> None:
    s = signer()
    note = s.sign_checkpoint(ORIGIN, 12, ROOT).note
    body, blank, sig = note.partition("\n\n")
    assert blank == "\n\n"
    assert body.split("\n") == [ORIGIN, "12", base64.b64encode(ROOT).decode()]
    assert sig.endswith("\n") and sig.count("\n") == 1
    assert sig.startswith("\u2014 " + ORIGIN + " ")
    blob = base64.b64decode(sig.rstrip("\n").split(" ")[2])
    # key hint = SHA-256(name || "\n" || 0x01 || public key)[:4], then a 64-byte Ed25519 signature.
    assert blob[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + s.public_key).digest()[:4]
    assert len(blob) == 68
    Ed25519PrivateKey.from_private_bytes(hashlib.sha256(bytes([1])).digest()).public_key().verify(
        blob[4:], (body + "\n").encode()
    )


def test_round_trip_and_verifier_key_format() -> None:
    s = signer()
    key = VerifierKey.parse(s.verifier_key)
    name, hint, raw = s.verifier_key.split("+", 2)
    assert name == ORIGIN and len(hint) == 8 and base64.b64decode(raw)[0] == 1
    head = open_note(s.sign_checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest()).note, [key])
    assert (head.origin, head.size) == (ORIGIN, 0)
    head = open_note(s.sign_checkpoint(ORIGIN, 2**40, ROOT).note, [key])
    assert (head.size, head.root) == (2**40, ROOT)


def test_wrong_key_and_unknown_signatures() -> None:
    ours, theirs = signer(seed=1), signer(seed=2)
    note = ours.sign_checkpoint(ORIGIN, 5, ROOT).note
    with pytest.raises(VerificationFailed, match="no signature from a trusted key"):
        open_note(note, [VerifierKey.parse(theirs.verifier_key)])
    # Same name, different key: the hint differs, so the line is not "ours" at all.
    with pytest.raises(VerificationFailed, match="no signature from a trusted key"):
        open_note(note, [VerifierKey.parse(signer(ORIGIN, seed=3).verifier_key)])

    # Key rotation / witness cosigning: extra signature lines from unknown keys are ignored.
    witness = signer("witness.example/w1", seed=4)
    cosigned = note + witness.sign_checkpoint(ORIGIN, 5, ROOT).note.partition("\n\n")[2]
    assert open_note(cosigned, [VerifierKey.parse(ours.verifier_key)]).size == 5
    assert open_note(cosigned, [VerifierKey.parse(witness.verifier_key)]).size == 5
    # A rotated-in key verifies alone.
    rotated = signer(ORIGIN, seed=9)
    both = note + rotated.sign_checkpoint(ORIGIN, 5, ROOT).note.partition("\n\n")[2]
    assert open_note(both, [VerifierKey.parse(rotated.verifier_key)]).size == 5


def test_a_forged_signature_with_a_matching_hint_is_rejected() -> None:
    s = signer()
    note = s.sign_checkpoint(ORIGIN, 5, ROOT).note
    forged = note.replace("\n5\n", "\n6\n", 1)
    with pytest.raises(VerificationFailed, match="does not verify"):
        open_note(forged, [VerifierKey.parse(s.verifier_key)])


def test_verifier_key_parsing_errors() -> None:
    good = signer().verifier_key
    name, hint, raw = good.split("+", 2)
    for bad in ("", "nohint", f"{name}+{hint}", f"{name}+zz+{raw}", f"{name}+{hint}+!!!", f"{name}+00000000+{raw}"):
        with pytest.raises(InvalidInput):
            VerifierKey.parse(bad)


def test_signer_refuses_bad_names_and_bodies() -> None:
    for bad in ("", "has space", "a+b"):
        with pytest.raises(ValueError):
            signer(bad)
    with pytest.raises(ValueError):
        signer().sign_checkpoint("two\nlines", 1, ROOT)
    with pytest.raises(ValueError):
        signer().sign_checkpoint(ORIGIN, -1, ROOT)
    with pytest.raises(ValueError):
        signer().sign_checkpoint(ORIGIN, 1, ROOT[:31])


def test_ten_thousand_single_character_mutations_are_all_rejected() -> None:
    seed = 20261129
    rng = random.Random(seed)
    s = signer()
    keys = [VerifierKey.parse(s.verifier_key)]
    notes = [s.sign_checkpoint(ORIGIN, rng.randrange(1, 10**9), hashlib.sha256(bytes([i])).digest()).note for i in range(50)]
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\u2014", "é"]
    for trial in range(10_000):
        note = notes[trial % len(notes)]
        pos = rng.randrange(len(note))
        replacement = rng.choice([c for c in alphabet if c != note[pos]])
        mutated = note[:pos] + replacement + note[pos + 1 :]
        with pytest.raises(VerificationFailed):
            open_note(mutated, keys)
            pytest.fail(f"mutation accepted (seed {seed}, trial {trial}, position {pos}, {note[pos]!r} -> {replacement!r})")


def test_non_canonical_base64_is_rejected() -> None:
    # 32 bytes -> 43 base64 characters and one "="; the last character carries 2 unused bits. A lenient decoder
    # maps several spellings to the same root, which would let a note change without changing what it says.
    s = signer()
    note = s.sign_checkpoint(ORIGIN, 5, ROOT).note
    root_b64 = base64.b64encode(ROOT).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(root_b64[42])
    twin = root_b64[:42] + alphabet[last ^ 1] + "="
    assert base64.b64decode(twin) == ROOT  # the twin decodes to the same bytes...
    with pytest.raises(VerificationFailed, match="not canonical"):  # ...and is still refused
        open_note(note.replace(root_b64, twin), [VerifierKey.parse(s.verifier_key)])
