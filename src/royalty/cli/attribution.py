"""``royalty attribute`` and ``royalty attribution …``: attribute answers to the data behind them, with receipts.

``royalty attribute ADAPTER --prompt P --response R`` (or ``--generate`` to let the adapter answer first) prints
who the answer owes and why; ``royalty attribution show|verify RECEIPT`` reads a receipt back or recomputes it from
the index (exit 1 naming the first differing field); ``royalty attribution index build|info ADAPTER`` makes and
describes an adapter's attribution index.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from ..attribution.receipts import PPM, AttributionReceipt
from ..attribution.service import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_METHOD,
    DEFAULT_DIM,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TOP,
    Attribution,
)
from ..errors import InvalidInput
from ..node import Node
from ._common import HomeOption, JsonOption, emit, node_at, read_json_document, table

app = typer.Typer(help="Proof of Attribution: receipts (show, verify) and attribution indexes (index build, info).",
                  no_args_is_help=True)
index_app = typer.Typer(help="An adapter's attribution index: build, info.", no_args_is_help=True)
app.add_typer(index_app, name="index")

AdapterArg = Annotated[str, typer.Argument(metavar="ADAPTER", help="name (latest version), name@N, or id (ad_…).")]
_RECEIPT_ID = re.compile(r"rcpt_[0-9a-f]{24}")


def register(root: typer.Typer) -> None:
    """Add ``royalty attribute`` at the top level."""

    @root.command("attribute")
    def attribute(
        adapter: AdapterArg,
        prompt: Annotated[str, typer.Option("--prompt", help="The question the adapter was asked.")],
        response: Annotated[str | None, typer.Option("--response", help="The answer to attribute.",
                                                     show_default=False)] = None,
        generate: Annotated[bool, typer.Option("--generate", help="Let the adapter answer first (greedy).")] = False,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1,
                                                    help="Longest generated answer, in tokens.")] = DEFAULT_MAX_NEW_TOKENS,
        top: Annotated[int, typer.Option("--top", min=1, help="How many top examples the receipt lists.")] = DEFAULT_TOP,
        request_id: Annotated[str | None, typer.Option("--request-id", help="The serving request this answers.",
                                                       show_default=False)] = None,
        home: HomeOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Attribute an answer to the training data of ADAPTER: weights per contributor, top examples, spans."""
        if (response is None) == (not generate):
            raise InvalidInput("give the answer with --response R, or --generate to let the adapter answer",
                               field="response")
        with node_at(home) as node:
            receipt = Attribution(node).attribute(adapter, prompt=prompt, response=response, request_id=request_id,
                                                  top=top, max_new_tokens=max_new_tokens)
            request = {"prompt": prompt, "response": _response_of(node, receipt, response)}
            emit(as_json, {"receipt": receipt.to_dict(), "request": request},
                 lambda: typer.echo(_receipt_text(node, receipt, request)))


@app.command("show")
def show(receipt_id: Annotated[str, typer.Argument(metavar="RECEIPT", help="A receipt id (rcpt_…).")],
         home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show a stored receipt: the request, weights, top examples and spans."""
    with node_at(home) as node:
        shown = Attribution(node).show(receipt_id)
        receipt = AttributionReceipt.parse(shown["receipt"])
        emit(as_json, shown, lambda: typer.echo(_receipt_text(node, receipt, shown["request"])
                                                + f"\njournal event {shown['event_seq']}"))


@app.command("verify")
def verify(receipt: Annotated[str, typer.Argument(metavar="RECEIPT",
                                                  help="A receipt id (rcpt_…), or a receipt's JSON file ('-': stdin).")],
           home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Recompute a receipt from the index and compare it bit for bit; exit 1 naming the first field that differs."""
    target: str | dict[str, Any] = receipt if _RECEIPT_ID.fullmatch(receipt) else \
        read_json_document(Path(receipt), "a receipt (a JSON object)")
    with node_at(home) as node:
        result = Attribution(node).verify(target)
        emit(as_json, result, f"receipt {result['receipt_id']} verifies: recomputed bit for bit from the index, "
                              f"and its hash is journaled in event {result['event_seq']}")


@index_app.command("build")
def index_build(
    adapter: AdapterArg,
    dim: Annotated[int, typer.Option("--dim", min=1, help="Projected gradient dimension.")] = DEFAULT_DIM,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Projection seed (default: a random secret).",
                                             show_default=False)] = None,
    method: Annotated[str, typer.Option("--method", help="inrun: replay the training and keep each example's share "
                                        "of the updates (default); final: gradients at the adapter's weights with a "
                                        "damped Fisher preconditioner.")] = DEFAULT_METHOD,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Examples per gradient pass (final).")] = DEFAULT_BATCH_SIZE,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Replace an index built with other parameters.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build ADAPTER's attribution index (a row per training example, and a span index of its text)."""
    with node_at(home) as node:
        record = Attribution(node).build_index(adapter, dim=dim, seed=seed, method=method, batch_size=batch_size,
                                                rebuild=rebuild)
        shown = {k: v for k, v in record.items() if k != "params"}
        shown["params"] = {k: v for k, v in record["params"].items() if k != "seed"}  # the seed stays secret
        verb = "reused the existing" if record["reused"] else "built the"
        replay = record.get("replay")
        how = "" if replay is None else (
            "; the replayed training reproduced the adapter bit for bit" if replay["identical"] else
            f"; the replayed training differs from the adapter (largest weight difference {replay['max_abs_diff']:.2e}: "
            "another platform or thread count), so rows describe a run within that distance of it")
        emit(as_json, shown, f"{verb} attribution index of {record['adapter']['ref']}: {record['rows']} rows, "
                             f"dim {record['dim']}, index {record['grad_checksum'][:12]}, spans "
                             f"{record['spans_checksum'][:12]}{how}")


@index_app.command("info")
def index_info(adapter: AdapterArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Describe ADAPTER's attribution index: parameters, rows, checksums, sizes."""
    with node_at(home) as node:
        info = Attribution(node).info(adapter)
        p, g, s = info["params"], info["grad"], info["spans"]
        emit(as_json, info, "\n".join([
            f"attribution index of {info['adapter']['ref']} ({info['path']})",
            (f"gradients  {g['rows']} rows x dim {g['dim']} at step {g['step']}, method {p.get('method', 'final')}"
             + (f", batch {p['batch_size']}, damping {p['damping']}" if p.get("method", "final") == "final" else "")
             + f", checksum {g['checksum']}"),
            f"projection {p['kind']}, fingerprint {info['projection_fingerprint']}",
            f"spans      {s['documents']} documents, {s['units']} bytes of text, checksum {s['checksum']}",
            f"journal    event {info.get('event_seq')}",
        ]))


# ----------------------------------------------------------------------------------------------------------------


def _response_of(node: Node, receipt: AttributionReceipt, given: str | None) -> str:
    if given is not None:
        return given
    return str(Attribution(node).show(receipt.receipt_id)["request"]["response"])


def _receipt_text(node: Node, r: AttributionReceipt, request: dict[str, Any]) -> str:
    names = {a.id: a.name for a in node.accounts.list()}
    slugs = {d.id: f"{d.slug}@{d.version}" for d in r.datanets}
    lines = [
        f"receipt {r.receipt_id}  adapter {r.adapter.name}@{r.adapter.version}",
        f"prompt    {request['prompt']!r}",
        f"response  {request['response']!r}{'  (generated by the adapter)' if r.request.generated else ''}",
        "",
    ]
    if r.weights.contributors:
        lines.append(f"weights of the data share ({r.method.influence_bps / 100:g}% influence, "
                     f"{100 - r.method.influence_bps / 100:g}% verbatim spans):")
        rows = [[names.get(a, a), a, f"{w:,}", f"{100 * w / PPM:.2f}%"]
                for a, w in sorted(r.weights.contributors.items(), key=lambda kv: (-kv[1], kv[0]))]
        lines.append(table(rows, ["CONTRIBUTOR", "ACCOUNT", "PPM", "SHARE"]))
        lines.append("datanets: " + ", ".join(f"{slugs.get(d, d)} {100 * w / PPM:.2f}%"
                                              for d, w in sorted(r.weights.datanets.items(), key=lambda kv: -kv[1])))
    else:
        lines.append("no training example helped this answer: the data share goes to the treasury")
    if r.top:
        lines += ["", "top examples (cosine of gradients, preconditioned):"]
        lines.append(table([[t.score, names.get(t.contributor, t.contributor), slugs.get(t.datanet_id, t.datanet_id),
                             str(t.position), t.contribution_id[:16]] for t in r.top],
                           ["SCORE", "CONTRIBUTOR", "DATANET", "POSITION", "CONTRIBUTION"]))
    if r.spans:
        lines += ["", "verbatim spans of the response found in the training text:"]
        for s in r.spans:
            who = ", ".join(sorted({names.get(c.contributor, c.contributor) for c in s.contributions}))
            lines.append(f"  [{s.start}:{s.end}] {s.text!r}  x{s.count}, {s.surprise} nats, from {who}")
    lines += ["", f"check it: royalty attribution verify {r.receipt_id}"]
    return "\n".join(lines)
