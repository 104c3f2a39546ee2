"""The end-to-end story ``royalty demo`` (and ``make demo``) tells, on a throwaway node.

Today: a node is born and participants join; a domain expert creates a curated datanet; a contributor imports a
small file with one bad line (the report shows it, the good lines are kept); the owner curates and publishes
version 1; an outsider checks one contribution's proof (contribution → version root → signed journal) with
nothing but the proof and the node's public key; the whole journal is replayed and verified. Later capabilities
(training, serving, attribution, settlement) extend this same story.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from .datanet import verify_proof
from .errors import InvalidInput
from .node import init_node

Say = Callable[[str], None]

# A small contribution file; line 4 is missing its response and is reported, the rest are kept.
SAMPLE = [
    '{"prompt": "How long should I cool a minor burn?", "response": "Hold it under cool running water for 20 minutes."}',
    '{"prompt": "What do I do for a nosebleed?", "response": "Sit up, lean forward and pinch the soft part of the nose for 10 minutes."}',
    '{"prompt": "How do I treat a bee sting?", "response": "Scrape the sting out sideways, wash the area and apply a cold pack."}',
    '{"prompt": "What is the recovery position?"}',
    '{"prompt": "When should I call an ambulance for chest pain?", "response": "At once if the pain is crushing, spreads to the arm or jaw, or comes with breathlessness."}',
]


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

        say("\n== 3. ben creates a curated datanet; ada contributes a file with one bad line")
        datanet = node.datanets.create(
            "first-aid-qa",
            title="First-aid questions and answers",
            kind="instruction",
            licenses=["CC-BY-4.0"],
            policy="curated",
            owner="ben",
            description="Short, checked first-aid answers for a domain assistant.",
        )
        say(f"   datanet {datanet.slug} ({datanet.id}), kind {datanet.kind}, policy {datanet.policy}, owner ben")
        sample = home / "first-aid.jsonl"
        sample.write_text("\n".join(SAMPLE) + "\n", encoding="utf-8")
        report = node.datanets.contribute_file(
            datanet.slug, sample.read_bytes(), sample.name, contributor="ada", consent="may be used to train and serve models"
        )
        counts = report.to_dict()["counts"]
        say(f"   {sample.name}: {counts['pending']} pending review, {counts['duplicates']} duplicates, {counts['rejected']} rejected")
        for rejected in report.rejected:
            say(f"     line {rejected['line']}: {rejected['reason']}")

        say("\n== 4. ben reviews the queue and publishes version 1")
        queue = node.datanets.queue(datanet.slug, actor="ben")
        node.datanets.review(datanet.slug, actor="ben", accept=[c.id for c in queue])
        # Publishing costs a protocol fee (Params.publish_fee), paid to the treasury: the operator funds ben first.
        node.tokens.faucet("ben", 10 * 10**6, actor=node.operator())
        version = node.datanets.publish(datanet.slug, actor="ben")
        say(f"   accepted {len(queue)}; version {version.number}: {version.size} contributions, root {version.root.hex()[:16]}…")

        say("\n== 5. The journal")
        for event in node.journal.events(limit=100):
            say(f"   #{event.seq:<3} {event.type:<22} leaf {event.leaf_hash.hex()[:16]}…")

        say("\n== 6. The node signs a checkpoint (C2SP signed note, Ed25519)")
        checkpoint = node.journal.checkpoint()
        for line in checkpoint.note.rstrip("\n").split("\n"):
            say(f"   | {line}")

        say("\n== 7. An outsider checks ada's first contribution with only the proof and the node's public key")
        bundle = json.loads(json.dumps(node.datanets.proof(datanet.slug, queue[0].id, version=version.number)))
        say(f"   contribution {bundle['contribution_id'][:16]}… at position {bundle['position']} of {bundle['size']}")
        say(f"   proof: {len(bundle['proof'])} hashes to the version root, then journal event #{bundle['journal']['seq']} "
            f"under a checkpoint of size {bundle['journal']['tree_size']}")
        result = verify_proof(bundle, [node.signer.verifier_key])
        say(f"   verified: in version {result['version']} of {result['datanet']['slug']}, root signed by {result['origin']}")

        say("\n== 8. The whole journal is replayed from its leaves and verified")
        report = node.journal.verify()
        say(
            f"   verified: {report.size} events, {report.checkpoints} signed checkpoint(s), "
            f"root {report.root.hex()}"
        )
        say("\nDone: every state change is journaled, signed and independently verifiable.")
