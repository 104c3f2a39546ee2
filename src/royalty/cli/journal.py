"""``royalty journal …``: read, prove and verify the node's Merkle log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidInput
from ..journal.audit import VerifierKey, verify_proof_bundle
from ._common import HomeOption, JsonOption, emit, node_at, read_json_document, table

app = typer.Typer(help="The journal: every state change, in a signed Merkle log anyone can verify.", no_args_is_help=True)

KeyOption = Annotated[
    list[str] | None,
    typer.Option("--key", help="Trusted verifier key (NAME+HINT+KEY); repeatable. Default: this node's key.", show_default=False),
]


@app.command("checkpoint")
def checkpoint(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Sign the current tree head (or show the latest checkpoint if nothing changed) and print the note."""
    with node_at(home) as node:
        cp = node.journal.checkpoint()
        emit(as_json, cp.to_dict(), cp.note.rstrip("\n"))


@app.command("checkpoints")
def checkpoints(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List the signed checkpoints."""
    with node_at(home) as node:
        cps = node.journal.checkpoints()
        rows = [[str(c.size), c.root.hex()] for c in cps]
        emit(as_json, {"checkpoints": [c.to_dict() for c in cps]}, table(rows, ["SIZE", "ROOT"]))


@app.command("show")
def show(
    seq: Annotated[int, typer.Argument(help="Event sequence number (= leaf index).", min=0)],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one event."""
    with node_at(home) as node:
        event = node.journal.event(seq)
        emit(
            as_json,
            event.to_dict(),
            f"#{event.seq} {event.type} at {event.ts_ms} by {event.actor or '-'}\n"
            f"leaf {event.leaf_hash.hex()}\n{json.dumps(event.data, indent=2, sort_keys=True, ensure_ascii=False)}",
        )


@app.command("events")
def events(
    after: Annotated[int, typer.Option("--after", help="Only events with seq greater than this.")] = -1,
    limit: Annotated[int, typer.Option("--limit", help="At most this many events.", min=1, max=10_000)] = 50,
    type_: Annotated[str | None, typer.Option("--type", help="Only events of this type.", show_default=False)] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List events in order."""
    with node_at(home) as node:
        items = node.journal.events(after=after, limit=limit, type=type_)
        rows = [[str(e.seq), e.type, e.actor or "-", json.dumps(e.data, sort_keys=True)[:60]] for e in items]
        emit(as_json, {"events": [e.to_dict() for e in items]}, table(rows, ["SEQ", "TYPE", "ACTOR", "DATA"]))


@app.command("proof")
def proof(
    seq: Annotated[int, typer.Argument(help="Event sequence number.", min=0)],
    size: Annotated[int | None, typer.Option("--size", help="Prove against the checkpoint of this size (default: latest).", show_default=False)] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print an inclusion proof for one event against a signed checkpoint.

    With --json the output is self-contained: save it and check it anywhere with `royalty journal verify-proof`.
    """
    with node_at(home) as node:
        bundle = node.journal.inclusion_proof(seq, size).to_dict()
        emit(
            as_json,
            bundle,
            f"event #{seq} in tree of size {bundle['tree_size']}\n"
            f"leaf   {bundle['leaf_hash']}\nroot   {bundle['root']}\n"
            + "\n".join(f"proof  {h}" for h in bundle["proof"])
            + "\n\n"
            + bundle["checkpoint"].rstrip("\n"),
        )


@app.command("verify")
def verify(home: HomeOption = None, key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Replay every event from its leaf bytes, recompute the tree, check every checkpoint's signature.

    Exits 1 and names the first bad sequence number on any tampering.
    """
    with node_at(home) as node:
        report = node.journal.verify(key or ())
        tail = f"; {report.unsigned_tail} newer event(s) not yet in a checkpoint" if report.unsigned_tail else ""
        emit(
            as_json,
            report.to_dict(),
            f"journal ok: {report.size} events, {report.checkpoints} signed checkpoint(s){tail}\nroot {report.root.hex()}",
        )


@app.command("verify-proof")
def verify_proof(
    file: Annotated[Path, typer.Argument(help="A proof saved from `royalty journal proof SEQ --json` ('-' for stdin).")],
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check an inclusion proof without any database: only the proof and a trusted verifier key."""
    if not key:
        # A proof cannot vouch for itself: the trusted key must come from elsewhere.
        raise InvalidInput("pass the node's verifier key with --key (see `royalty info`)", field="key")
    keys = [VerifierKey.parse(k) for k in key]
    bundle = read_json_document(file, "a journal proof document")
    head = verify_proof_bundle(bundle, keys)
    emit(
        as_json,
        {"ok": True, "seq": bundle["seq"], "tree_size": head.size, "root": head.root.hex(), "origin": head.origin},
        f"ok: event #{bundle['seq']} is in {head.origin}'s signed tree of size {head.size}",
    )
