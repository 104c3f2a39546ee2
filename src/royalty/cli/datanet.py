"""``royalty datanet …``: create datanets, contribute, curate, publish versions, prove membership, export."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from ..datanet import DatanetLimits, verify_proof as verify_datanet_proof
from ..datanet.export import EXPORT_FORMATS
from ..datanet.records import KINDS
from ..datanet.registry import POLICIES, STATUSES
from ..errors import InvalidInput, NotFound, PayloadTooLarge
from ..node import Node
from ._common import HomeOption, JsonOption, emit, node_at, read_bytes, read_json_document, table

app = typer.Typer(help="Datanets: attributed data collections with provenance, curation, versions and proofs.", no_args_is_help=True)

AsOption = Annotated[str, typer.Option("--as", help="Act as this account (name or id).")]
SlugArg = Annotated[str, typer.Argument(help="The datanet's slug (or its dn_… id).")]
ContributionArg = Annotated[str, typer.Argument(help="Contribution id (64 hex digits).")]
PROGRESS_MIN_BYTES = 1 << 20  # show a progress bar for files larger than this (when stderr is a terminal)


# --- create, list, show, curators ----------------------------------------------------------------------------


@app.command("create")
def create(
    slug: Annotated[str, typer.Argument(help="Short name people type: lowercase letters, digits and '-'.")],
    title: Annotated[str, typer.Option("--title", help="Human title.")],
    kind: Annotated[str, typer.Option("--kind", help=f"Record kind: {', '.join(KINDS)}.")],
    license_: Annotated[
        list[str], typer.Option("--license", help="Accepted SPDX license(s), comma-separated or repeated, e.g. CC-BY-4.0,MIT.")
    ],
    policy: Annotated[str, typer.Option("--policy", help=f"{' or '.join(POLICIES)}: curated queues contributions for review.")],
    description: Annotated[str, typer.Option("--description", help="Longer description.")] = "",
    tags: Annotated[str, typer.Option("--tags", help="Comma-separated tags, e.g. 'en,wiki'.")] = "",
    limit: Annotated[
        list[str] | None,
        typer.Option(
            "--limit",
            help=f"Limit as key=value; repeatable. Keys: {', '.join(DatanetLimits.model_fields)}.",
            show_default=False,
        ),
    ] = None,
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a datanet; the acting account becomes its owner."""
    limits = _parse_limits(limit or [])
    with node_at(home) as node:
        dn = node.datanets.create(
            slug,
            title=title,
            kind=kind,
            licenses=[x for item in license_ for x in item.split(",")],
            policy=policy,
            owner=as_,
            description=description,
            tags=tags,
            limits=limits,
        )
        owner = node.accounts.get(dn.owner_id)
        emit(
            as_json,
            dn.to_dict(),
            f"created datanet {dn.slug} ({dn.id}), owned by {owner.name}\n"
            f"kind {dn.kind}, policy {dn.policy}, licenses {', '.join(dn.licenses)}",
        )


@app.command("list")
def list_(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List datanets."""
    with node_at(home) as node:
        items = node.datanets.list()
        names = _names(node)
        rows = [[d.slug, d.kind, d.policy, ",".join(d.licenses), names(d.owner_id), d.title] for d in items]
        emit(
            as_json,
            {"datanets": [d.to_dict() for d in items]},
            table(rows, ["SLUG", "KIND", "POLICY", "LICENSES", "OWNER", "TITLE"]) if items else "no datanets yet; create one with: royalty datanet create",
        )


@app.command("show")
def show(
    slug: SlugArg,
    version: Annotated[int | None, typer.Option("--version", help="Show this published version instead.", min=1, show_default=False)] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a datanet: counts by status, acceptance rate, leaderboard and versions (or one version)."""
    with node_at(home) as node:
        if version is not None:
            v = node.datanets.version(slug, version)
            stats = v.stats
            names = _names(node)
            by = ", ".join(f"{names(a)} {n}" for a, n in stats.get("by_contributor", {}).items()) or "-"
            emit(
                as_json,
                v.to_dict(),
                f"{slug} version {v.number}\n"
                f"root          {v.root.hex()}\n"
                f"size          {v.size} records, {stats.get('bytes', 0):,} bytes\n"
                f"contributors  {stats.get('contributors', 0)} ({by})\n"
                f"journal seq   {v.created_seq}",
            )
            return
        stats = node.datanets.stats(slug)
        emit(as_json, stats, lambda: typer.echo(_show_text(stats)))


def _show_text(stats: dict[str, Any]) -> str:
    dn = stats["datanet"]
    counts = stats["counts"]
    rate = stats["acceptance_rate"]
    lines = [
        f"{dn['slug']}: {dn['title']} ({dn['id']})",
        f"kind          {dn['kind']}",
        f"policy        {dn['policy']}",
        f"licenses      {', '.join(dn['licenses'])}",
        f"tags          {', '.join(dn['tags']) or '-'}",
        "counts        " + ", ".join(f"{counts[s]} {s}" for s in STATUSES),
        f"acceptance    {'-' if rate is None else f'{rate:.1%}'}",
        f"contributors  {stats['contributors']}",
    ]
    if dn["description"]:
        lines.insert(1, dn["description"])
    if stats["leaderboard"]:
        rows = [
            [
                str(i),
                e["name"],
                str(e["accepted"]),
                str(e["pending"]),
                str(e["rejected"]),
                f"{e['bytes']:,}",
                "-" if e["acceptance_rate"] is None else f"{e['acceptance_rate']:.0%}",
            ]
            for i, e in enumerate(stats["leaderboard"], start=1)
        ]
        lines += ["", table(rows, ["#", "CONTRIBUTOR", "ACCEPTED", "PENDING", "REJECTED", "BYTES", "RATE"])]
    if stats["versions"]:
        rows = [[str(v["version"]), str(v["size"]), v["root"]] for v in stats["versions"]]
        lines += ["", table(rows, ["VERSION", "SIZE", "ROOT"])]
    else:
        lines += ["", f"no versions yet; publish one with: royalty datanet publish {dn['slug']}"]
    return "\n".join(lines)


@app.command("add-curator")
def add_curator(
    slug: SlugArg,
    account: Annotated[str, typer.Argument(help="Account (name or id) to make a curator.")],
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make an account a curator of a datanet (owner only): curators review contributions."""
    with node_at(home) as node:
        acct = node.datanets.add_curator(slug, account, actor=as_)
        emit(as_json, acct.to_dict(), f"{acct.name} is now a curator of {slug}")


# --- contribute ------------------------------------------------------------------------------------------------


@app.command("contribute")
def contribute(
    slug: SlugArg,
    file: Annotated[Path, typer.Argument(help="A .jsonl, .ndjson, .csv, .parquet, .txt or .md file.")],
    license_: Annotated[str | None, typer.Option("--license", help="License for rows that name none (SPDX).", show_default=False)] = None,
    source: Annotated[str | None, typer.Option("--source", help="Where the data comes from (default: the file name).", show_default=False)] = None,
    consent: Annotated[str | None, typer.Option("--consent", help="Consent statement for the rows.", show_default=False)] = None,
    tags: Annotated[str | None, typer.Option("--tags", help="Comma-separated tags for the rows.", show_default=False)] = None,
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Contribute every record of a file. Valid rows are kept; each bad row is reported by line.

    Re-running the same file changes nothing. Exits 1 (after the report) when any row was rejected.
    """
    with node_at(home) as node:
        limit = node.datanets.get(slug).limits.max_file_bytes
        try:
            size = file.stat().st_size if file.is_file() else None
        except OSError:
            size = None  # read_bytes below names the problem
        if size is not None and size > limit:  # refuse before reading it all into memory
            raise PayloadTooLarge(
                f"{file.name} is {size:,} bytes; this datanet accepts files up to {limit:,} bytes (max_file_bytes)",
                field="file",
            )
        data = read_bytes(file)
        with _progress_bar(len(data), data.count(b"\n") + 1) as progress:
            report = node.datanets.contribute_file(
                slug,
                data,
                file.name,
                contributor=as_,
                license=license_,
                source=source,
                consent=consent,
                tags=tags,
                progress=progress,
            ).to_dict()
    emit(as_json, report, lambda: typer.echo(_report_text(report)))
    rejected = report["counts"]["rejected"]
    if rejected:
        typer.echo(f"royalty: error: {rejected} of {report['rows']} row(s) rejected (see the report above)", err=True)
        raise typer.Exit(1)


def _report_text(report: dict[str, Any]) -> str:
    counts = report["counts"]
    slug = report["datanet"]
    lines = [
        f"{slug}: {report['rows']} row(s): {counts['accepted']} accepted, {counts['pending']} pending review, "
        f"{counts['duplicates']} duplicate(s), {counts['rejected']} rejected"
    ]
    for r in report["rejected"]:
        lines.append(f"line {r['line']}: {r['reason']}")
    for f in report["flagged"]:
        lines.append(
            f"line {f['line']}: near-duplicate ({f['similarity']:.0%} similar to {f['near_duplicate_of']}), flagged for review"
        )
    if report["unchanged"]:
        if counts["duplicates"] and not counts["rejected"]:
            lines.append(f"nothing new: every record is already in {slug}")
        else:
            lines.append(f"nothing new was added to {slug}")
    return "\n".join(lines)


@contextmanager
def _progress_bar(size: int, lines: int) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for large files, only when stderr is a terminal; otherwise no callback."""
    if size <= PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("contributing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("rows", total=lines)
        yield lambda done: bar.update(task, completed=done, total=max(lines, done))


# --- curate ----------------------------------------------------------------------------------------------------


@app.command("queue")
def queue(
    slug: SlugArg,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.", min=1, max=10_000)] = 100,
    after: Annotated[int, typer.Option("--after", help="Only contributions with ordinal greater than this.")] = -1,
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List contributions awaiting review (owners and curators), with any near-duplicate match."""
    with node_at(home) as node:
        items = node.datanets.queue(slug, actor=as_, limit=limit, after=after)
        names = _names(node)
        rows = [
            [
                str(c.ordinal),
                c.id,
                names(c.contributor_id),
                str(c.size_bytes),
                "-" if c.near_duplicate_of is None else f"{c.near_duplicate_of[:12]}… ({(c.near_duplicate_score or 0) / 100:.0f}%)",
                _preview(c.record),
            ]
            for c in items
        ]
        emit(
            as_json,
            {"contributions": [c.to_dict() for c in items]},
            table(rows, ["ORD", "ID", "CONTRIBUTOR", "BYTES", "NEAR-DUPLICATE OF", "RECORD"]) if items else f"nothing to review in {slug}",
        )


@app.command("review")
def review(
    slug: SlugArg,
    accept: Annotated[list[str] | None, typer.Option("--accept", help="Contribution id to accept; repeatable.", show_default=False)] = None,
    reject: Annotated[list[str] | None, typer.Option("--reject", help="Contribution id to reject; repeatable.", show_default=False)] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (required with --reject; the contributor sees it).", show_default=False)] = None,
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Accept or reject pending contributions (owners and curators). One bad id changes nothing."""
    with node_at(home) as node:
        result = node.datanets.review(slug, actor=as_, accept=accept or (), reject=reject or (), reason=reason)
        emit(as_json, result, f"{slug}: accepted {len(result['accepted'])}, rejected {len(result['rejected'])}")


# --- read contributions ----------------------------------------------------------------------------------------


@app.command("contributions")
def contributions(
    slug: SlugArg,
    status: Annotated[str | None, typer.Option("--status", help=f"Only this status: {', '.join(STATUSES)}.", show_default=False)] = None,
    contributor: Annotated[str | None, typer.Option("--contributor", help="Only this account's (name or id).", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.", min=1, max=10_000)] = 100,
    after: Annotated[int, typer.Option("--after", help="Only contributions with ordinal greater than this.")] = -1,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List contributions in arrival order (paginate with --after ORDINAL)."""
    with node_at(home) as node:
        items = node.datanets.contributions(slug, status=status, contributor=contributor, after=after, limit=limit)
        names = _names(node)
        rows = [[str(c.ordinal), c.id, c.status, names(c.contributor_id), c.license, str(c.size_bytes), _preview(c.record)] for c in items]
        emit(
            as_json,
            {"contributions": [c.to_dict() for c in items], "next_after": items[-1].ordinal if len(items) == limit else None},
            table(rows, ["ORD", "ID", "STATUS", "CONTRIBUTOR", "LICENSE", "BYTES", "RECORD"]) if items else "no contributions",
        )


@app.command("contribution")
def contribution(slug: SlugArg, contribution_id: ContributionArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show one contribution with its record and provenance."""
    with node_at(home) as node:
        c = node.datanets.contribution(slug, contribution_id)
        names = _names(node)
        lines = [
            f"id           {c.id}",
            f"ordinal      {c.ordinal}",
            f"status       {c.status}" + (f" ({c.reason})" if c.reason else ""),
            f"contributor  {names(c.contributor_id)} ({c.contributor_id})",
            f"license      {c.license}",
            f"source       {c.source or '-'}",
            f"consent      {c.consent or '-'}",
            f"tags         {', '.join(c.tags) or '-'}",
            f"size         {c.size_bytes} bytes",
        ]
        if c.near_duplicate_of:
            lines.append(f"near-dup of  {c.near_duplicate_of} ({(c.near_duplicate_score or 0) / 100:.0f}% similar)")
        lines.append(
            "record       (purged)" if c.record is None else json.dumps(c.record, indent=2, sort_keys=True, ensure_ascii=False)
        )
        emit(as_json, c.to_dict(), "\n".join(lines))


@app.command("withdraw")
def withdraw(slug: SlugArg, contribution_id: ContributionArg, as_: AsOption = "operator", home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Take back your contribution: it is left out of every later version."""
    with node_at(home) as node:
        c = node.datanets.withdraw(slug, contribution_id, actor=as_)
        emit(as_json, c.to_dict(), f"withdrew contribution {c.id} from {slug}")


@app.command("purge")
def purge(slug: SlugArg, contribution_id: ContributionArg, as_: AsOption = "operator", home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Erase a withdrawn contribution's content (its id stays, so published versions still verify)."""
    with node_at(home) as node:
        c = node.datanets.purge(slug, contribution_id, actor=as_)
        emit(as_json, c.to_dict(), f"purged the content of contribution {c.id} from {slug}")


# --- versions, proofs, export ----------------------------------------------------------------------------------


@app.command("publish")
def publish(slug: SlugArg, as_: AsOption = "operator", home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Publish the next version: a snapshot of the accepted contributions with a Merkle root (owner only)."""
    with node_at(home) as node:
        v = node.datanets.publish(slug, actor=as_)
        emit(
            as_json,
            v.to_dict(),
            f"published {slug} version {v.number}\nroot  {v.root.hex()}\nsize  {v.size} records, {v.stats.get('bytes', 0):,} bytes",
        )


@app.command("proof")
def proof(
    slug: SlugArg,
    contribution_id: ContributionArg,
    version: Annotated[int | None, typer.Option("--version", help="Prove against this version (default: latest).", min=1, show_default=False)] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Prove a contribution is in a published version, chained to the node's signed journal.

    With --json the output is self-contained: save it and check it anywhere with `royalty datanet verify-proof`.
    """
    with node_at(home) as node:
        bundle = node.datanets.proof(slug, contribution_id, version=version)
        journal = bundle["journal"]
        emit(
            as_json,
            bundle,
            f"contribution {bundle['contribution_id']}\n"
            f"is at position {bundle['position']} of version {bundle['version']} of {bundle['datanet']['slug']} "
            f"({bundle['size']} records)\n"
            f"root     {bundle['root']}\n"
            + "".join(f"proof    {h}\n" for h in bundle["proof"])
            + f"published in journal event #{journal['seq']}, in the signed tree of size {journal['tree_size']}\n"
            f"save it with --json and check it with: royalty datanet verify-proof FILE --key KEY",
        )


@app.command("verify-proof")
def verify_proof(
    file: Annotated[Path, typer.Argument(help="A proof saved from `royalty datanet proof SLUG ID --json` ('-' for stdin).")],
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help="Trusted verifier key (NAME+HINT+KEY, see `royalty info`); repeatable.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check a datanet proof without any database: only the proof and a trusted verifier key."""
    if not key:
        # A proof cannot vouch for itself: the trusted key must come from elsewhere.
        raise InvalidInput("pass the node's verifier key with --key (see `royalty info`)", field="key")
    bundle = read_json_document(file, "a datanet proof document")
    result = verify_datanet_proof(bundle, key)
    emit(
        as_json,
        result,
        f"ok: contribution {result['contribution_id']} is in version {result['version']} of "
        f"{result['datanet'].get('slug', result['datanet'].get('id'))} (root {result['root']}),\n"
        f"published in journal event #{result['journal_seq']} of {result['origin']}'s signed tree of size "
        f"{result['checkpoint_size']}",
    )


@app.command("export")
def export(
    slug: SlugArg,
    version: Annotated[int | None, typer.Option("--version", help="Version to export (default: latest).", min=1, show_default=False)] = None,
    format_: Annotated[
        str | None,
        typer.Option("--format", help=f"{' or '.join(EXPORT_FORMATS)} (default: from --output's suffix, else jsonl).", show_default=False),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here (default: stdout, jsonl only).", show_default=False)] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export a published version: the records plus lineage (contributor, license, source) per row."""
    fmt = format_ or ("parquet" if output is not None and output.suffix.lower() == ".parquet" else "jsonl")
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"format {fmt!r} is unknown: choose jsonl or parquet", field="format")
    if output is None and fmt == "parquet":
        raise InvalidInput("parquet is a binary format: pass --output PATH", field="output")
    if output is None and as_json:
        raise InvalidInput("--json needs --output: without it the JSONL rows themselves go to stdout", field="output")
    with node_at(home) as node:
        number = version if version is not None else node.datanets.version(slug).number
        if output is None:
            node.datanets.version(slug, number)  # refuse an unknown version before writing anything
            sys.stdout.flush()
            stream = typer.get_binary_stream("stdout")
            node.datanets.export(slug, version=number, format=fmt, out=stream)
            stream.flush()
            return
        count = _export_to_file(node, slug, number, fmt, output)
        emit(
            as_json,
            {"datanet": slug, "version": number, "format": fmt, "rows": count, "output": str(output)},
            f"wrote {count} rows of {slug} version {number} to {output} ({fmt})",
        )


def _export_to_file(node: Node, slug: str, number: int, fmt: str, output: Path) -> int:
    """Write to a temporary file beside ``output`` and rename, so a failed export leaves no partial file."""
    if output.is_dir():
        raise InvalidInput(f"{output}: is a directory; give a file path", field="output")
    partial = output.with_name(f".{output.name}.partial")
    try:
        with open(partial, "wb") as out:
            count = node.datanets.export(slug, version=number, format=fmt, out=out)
        os.replace(partial, output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise InvalidInput(f"{output}: cannot write ({exc.strerror or type(exc).__name__})", field="output") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


# --- helpers ---------------------------------------------------------------------------------------------------


def _parse_limits(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs into a limits dict; every problem reported at once. Values are checked by the library."""
    known = tuple(DatanetLimits.model_fields)
    limits: dict[str, Any] = {}
    problems: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            problems.append(f"--limit {item!r} must look like key=value")
        elif key not in known:
            problems.append(f"unknown limit {key!r}: choose from {', '.join(known)}")
        else:
            limits[key] = value
    if problems:
        try:  # report bad values of the known keys in the same line
            DatanetLimits(**limits)
        except ValidationError as exc:
            problems += [f"limit {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise InvalidInput("; ".join(problems), field="limits")
    return limits


def _names(node: Node) -> Callable[[str], str]:
    """Account id → name, looked up once per id."""
    cache: dict[str, str] = {}

    def name(account_id: str) -> str:
        if account_id not in cache:
            try:
                cache[account_id] = node.accounts.get(account_id).name
            except NotFound:
                cache[account_id] = account_id
        return cache[account_id]

    return name


def _preview(record: dict[str, Any] | None, width: int = 40) -> str:
    """The start of a record's text, on one line."""
    if record is None:
        return "(purged)"
    if "messages" in record:
        text = " | ".join(str(m.get("content", "")) for m in record["messages"] if isinstance(m, dict))
    else:
        text = " | ".join(str(record[k]) for k in ("text", "prompt", "response") if k in record)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
