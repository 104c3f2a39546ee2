"""The end-to-end story ``royalty demo`` (and ``make demo``) tells, on a throwaway node.

Today: a node is born, participants join, every change lands in the journal, the node signs a checkpoint, an
outsider checks one event's inclusion with nothing but the proof and the node's public key, and the whole
journal is replayed and verified. Later capabilities (datanets, training, serving, attribution, settlement)
extend this same story.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import InvalidInput
from .journal.audit import VerifierKey, verify_proof_bundle
from .node import init_node

Say = Callable[[str], None]


def run_demo(home: Path | None, say: Say) -> None:
    if home is None:
        with tempfile.TemporaryDirectory(prefix="royalty-demo-") as tmp:
            _story(Path(tmp) / "node", say)
        return
    if home.exists() and any(home.iterdir()):
        raise InvalidInput(f"{home} is not empty; the demo needs a new directory (or no --home)", field="home")
    _story(home, say)


def _story(home: Path, say: Say) -> None:
    say("== 1. A node is born")
    node, _ = init_node(home)
    with node:
        say(f"   node {node.node_id} at {node.home}")
        say(f"   its checkpoint verifier key: {node.signer.verifier_key}")

        say("\n== 2. Participants join (each change is a journal event)")
        people = [
            ("ada", "a data contributor"),
            ("ben", "a domain expert who will train an adapter"),
            ("cy", "an app developer who will call the API"),
        ]
        for name, role in people:
            account, key = node.accounts.create(name, actor=node.operator())
            assert key is not None
            say(f"   {name:<4} {account.id}  {role}; API key {key[:22]}… (shown once, stored hashed)")
        who = node.accounts.authenticate(key)
        say(f"   the last key authenticates as {who.name!r}")

        say("\n== 3. The journal")
        for event in node.journal.events(limit=100):
            say(f"   #{event.seq:<3} {event.type:<22} leaf {event.leaf_hash.hex()[:16]}…")

        say("\n== 4. The node signs a checkpoint (C2SP signed note, Ed25519)")
        checkpoint = node.journal.checkpoint()
        for line in checkpoint.note.rstrip("\n").split("\n"):
            say(f"   | {line}")

        say("\n== 5. An outsider checks one event with only the proof and the public key")
        seq = node.journal.size() - 2
        bundle = json.loads(json.dumps(node.journal.inclusion_proof(seq).to_dict()))
        head = verify_proof_bundle(bundle, [VerifierKey.parse(node.signer.verifier_key)])
        say(f"   event #{seq} is in the signed tree of size {head.size}: {len(bundle['proof'])} hashes, verified")

        say("\n== 6. The whole journal is replayed from its leaves and verified")
        report = node.journal.verify()
        say(
            f"   verified: {report.size} events, {report.checkpoints} signed checkpoint(s), "
            f"root {report.root.hex()}"
        )
        say("\nDone: every state change is journaled, signed and independently verifiable.")
