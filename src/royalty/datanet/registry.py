"""The Datanets service (``node.datanets``): create, contribute, deduplicate, curate, withdraw, publish, prove,
export. Everything that changes state is journaled in the same transaction as the change.

Authorization (who may do what) lives here, not in the CLI or HTTP layer:

    create datanet        any account (it becomes the owner)
    add curator           owner
    contribute            any account
    review (accept/reject) owner, curator
    withdraw, purge       the contributor
    publish               owner
    read, proof, export   anyone
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..accounts import Account, Accounts
from ..errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, PermissionDenied
from ..journal.log import Journal
from ..store import Store
from ..store.engine import insert_rows
from ..store.schema import account_roles, accounts, contributions, datanet_versions, datanets
from . import dedup, export, versions
from .formats import Row, read_rows
from .records import (
    KINDS,
    Provenance,
    RecordError,
    check_license_list,
    make_provenance,
    make_record,
    parse_tags,
    split_row,
)

POLICIES: tuple[str, ...] = ("open", "curated")
STATUSES: tuple[str, ...] = ("pending", "accepted", "rejected", "withdrawn")
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
BATCH = 5_000  # contributions per write transaction: bounds memory and how long the write lock is held
DAY_MS = 86_400_000
_ORDINAL_MAX = 2**63 - 1  # ordinals are BIGINT: a cursor beyond this means "after everything"
Progress = Callable[[int], None]  # called with the number of rows processed so far


class DatanetLimits(BaseModel):
    """Per-datanet limits; every field can be set at creation (``--limit key=value`` on the CLI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_record_bytes: int = Field(65_536, ge=16, le=16 * 2**20, description="Largest canonical record, in bytes.")
    max_records_per_day: int = Field(10_000, ge=1, description="Contributions one account may add per 24 hours.")
    near_duplicate_threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="Estimated Jaccard similarity at which a record is a near-duplicate; 0 = off."
    )
    max_file_bytes: int = Field(100 * 2**20, ge=1, description="Largest file accepted in one contribution.")

    @property
    def threshold_bp(self) -> int:
        return round(self.near_duplicate_threshold * 10_000)

    def to_json(self) -> dict[str, int]:
        # Integers only: the limits are journaled, and journal events carry no floats.
        return {
            "max_record_bytes": self.max_record_bytes,
            "max_records_per_day": self.max_records_per_day,
            "near_duplicate_threshold_bp": self.threshold_bp,
            "max_file_bytes": self.max_file_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, int]) -> DatanetLimits:
        values = dict(data)
        values["near_duplicate_threshold"] = values.pop("near_duplicate_threshold_bp") / 10_000
        return cls(**values)


@dataclass(frozen=True)
class Datanet:
    id: str
    slug: str
    title: str
    description: str
    kind: str
    licenses: tuple[str, ...]
    policy: str
    tags: tuple[str, ...]
    owner_id: str
    limits: DatanetLimits
    created_ms: int
    created_seq: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "slug": self.slug,
            "title": self.title,
            "description": self.description,
            "kind": self.kind,
            "licenses": list(self.licenses),
            "policy": self.policy,
            "tags": list(self.tags),
            "owner": self.owner_id,
            "limits": self.limits.model_dump(),
            "created_ms": self.created_ms,
            "created_seq": self.created_seq,
        }


@dataclass(frozen=True)
class Contribution:
    datanet_id: str
    id: str
    ordinal: int
    contributor_id: str
    status: str
    license: str
    source: str
    consent: str
    tags: tuple[str, ...]
    size_bytes: int
    record: dict[str, Any] | None  # None once purged
    near_duplicate_of: str | None
    near_duplicate_score: int | None
    reason: str | None
    created_ms: int
    created_seq: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "datanet": self.datanet_id,
            "ordinal": self.ordinal,
            "contributor": self.contributor_id,
            "status": self.status,
            "license": self.license,
            "source": self.source,
            "consent": self.consent,
            "tags": list(self.tags),
            "size_bytes": self.size_bytes,
            "record": self.record,
            "purged": self.record is None,
            "near_duplicate_of": self.near_duplicate_of,
            "near_duplicate_similarity": None if self.near_duplicate_score is None else self.near_duplicate_score / 10_000,
            "reason": self.reason,
            "created_ms": self.created_ms,
            "created_seq": self.created_seq,
        }


@dataclass
class ContributionReport:
    """What happened to every row of one contribution call."""

    datanet: str
    rows: int = 0
    accepted: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    flagged: list[dict[str, Any]] = field(default_factory=list)  # near-duplicates queued for review

    @property
    def unchanged(self) -> bool:
        return not self.accepted and not self.pending

    def reject(self, line: int, reason: str, field_: str | None = None) -> None:
        self.rejected.append({"line": line, "reason": reason, "field": field_})

    def to_dict(self) -> dict[str, Any]:
        return {
            "datanet": self.datanet,
            "rows": self.rows,
            "counts": {
                "accepted": len(self.accepted),
                "pending": len(self.pending),
                "duplicates": len(self.duplicates),
                "rejected": len(self.rejected),
            },
            "unchanged": self.unchanged,
            "accepted": self.accepted,
            "pending": self.pending,
            "duplicates": self.duplicates,
            "rejected": sorted(self.rejected, key=lambda r: r["line"]),
            "flagged": self.flagged,
        }


@dataclass
class _Candidate:
    line: int
    id: str
    content: bytes
    text: str
    provenance: Provenance


class Datanets:
    """The datanets service. Versions, proofs and export are in ``versions.py`` and ``export.py``."""

    def __init__(self, store: Store, journal: Journal, accounts_: Accounts, clock: Callable[[], int]) -> None:
        self.store = store
        self.journal = journal
        self.accounts = accounts_
        self.clock = clock
        self._indexes: dict[str, dedup.NearDuplicateIndex] = {}
        self._journal_proofs: dict[tuple[int, int], dict[str, Any]] = {}  # see versions._journal_proof
        # The node's Fees service (set by the Node): publish charges the publishing fee in its own transaction.
        self.fees: Any = None

    # --- create and roles --------------------------------------------------------------------------------------

    def create(
        self,
        slug: str,
        *,
        title: str,
        kind: str,
        licenses: Sequence[str],
        policy: str,
        owner: str,
        description: str = "",
        tags: Sequence[str] | str = (),
        limits: DatanetLimits | dict[str, Any] | None = None,
    ) -> Datanet:
        """Create a datanet owned by ``owner``. All problems are reported together (InvalidInput)."""
        problems: list[tuple[str, str]] = []
        if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
            problems.append(("slug", f"slug {slug!r} is not allowed: use 1-64 lowercase letters, digits and '-'"))
        if not title or not title.strip() or len(title) > 200:
            problems.append(("title", "title must be 1-200 characters"))
        if kind not in KINDS:
            problems.append(("kind", f"kind {kind!r} is unknown: choose one of {', '.join(KINDS)}"))
        if policy not in POLICIES:
            problems.append(("policy", f"policy {policy!r} is unknown: choose open or curated"))
        licenses = list(dict.fromkeys(x.strip() for x in licenses if x.strip()))  # "MIT,MIT" is one license
        problems += [("license", p) for p in check_license_list(licenses)]
        if len(description) > 20_000:
            problems.append(("description", "description is longer than 20,000 characters"))
        for name, value in (("title", title), ("description", description)):
            if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL
                problems.append((name, f"{name} contains a NUL character"))
            elif isinstance(value, str) and not _encodable(value):  # a lone surrogate: neither backend stores it
                problems.append((name, f"{name} is not valid UTF-8 text"))
        try:
            tag_list = parse_tags(tags)
        except RecordError as exc:
            problems.append(("tags", exc.message))
            tag_list = ()
        try:
            limits = limits if isinstance(limits, DatanetLimits) else DatanetLimits(**(limits or {}))
        except ValidationError as exc:
            for error in exc.errors():
                name = ".".join(str(p) for p in error["loc"])
                problems.append((f"limits.{name}", f"limit {name}: {error['msg']}"))
            limits = DatanetLimits()
        if problems:
            raise InvalidInput("; ".join(m for _, m in problems), field=problems[0][0])

        owner_account = self._account(owner)
        try:
            return self._insert_datanet(
                slug, title, kind, licenses, policy, owner_account, description, tag_list, limits
            )
        except IntegrityError:
            # Another process created the same slug between our check and our insert (PostgreSQL, READ COMMITTED).
            raise Conflict(f"a datanet named {slug!r} already exists", field="slug") from None

    def _insert_datanet(
        self,
        slug: str,
        title: str,
        kind: str,
        licenses: list[str],
        policy: str,
        owner_account: Account,
        description: str,
        tag_list: tuple[str, ...],
        limits: DatanetLimits,
    ) -> Datanet:
        with self.store.write() as conn:
            if conn.execute(select(datanets.c.id).where(datanets.c.slug == slug)).first():
                raise Conflict(f"a datanet named {slug!r} already exists", field="slug")
            datanet_id = "dn_" + secrets.token_hex(8)
            now = self.clock()
            event = self.journal.append(
                conn,
                "datanet.created",
                {
                    "id": datanet_id,
                    "slug": slug,
                    "title": title.strip(),
                    "kind": kind,
                    "licenses": licenses,
                    "policy": policy,
                    "tags": list(tag_list),
                    "owner": owner_account.id,
                    "limits": limits.to_json(),
                },
                actor=owner_account.id,
            )
            conn.execute(
                insert(datanets).values(
                    id=datanet_id,
                    slug=slug,
                    title=title.strip(),
                    description=description,
                    kind=kind,
                    licenses=json.dumps(licenses),
                    policy=policy,
                    tags=json.dumps(list(tag_list)),
                    owner_id=owner_account.id,
                    limits=json.dumps(limits.to_json()),
                    created_ms=now,
                    created_seq=event.seq,
                )
            )
            conn.execute(insert(account_roles).values(account_id=owner_account.id, role="owner", scope=_scope(datanet_id)))
        return self.get(datanet_id)

    def add_curator(self, datanet: str, account: str, *, actor: str) -> Account:
        dn = self.get(datanet)
        self._require_owner(dn, actor, "add curators")
        return self.accounts.grant_role(self._account(account).id, "curator", scope=_scope(dn.id), actor=self._account(actor).id)

    def curators(self, datanet: str) -> list[str]:
        dn = self.get(datanet)
        with self.store.read() as conn:
            rows = conn.execute(
                select(account_roles.c.account_id).where(
                    account_roles.c.scope == _scope(dn.id), account_roles.c.role == "curator"
                )
            ).all()
        return [r.account_id for r in rows]

    # --- read --------------------------------------------------------------------------------------------------

    def get(self, ref: str) -> Datanet:
        """A datanet by slug or id (``dn_…``)."""
        with self.store.read() as conn:
            return self.get_in(conn, ref)

    def get_in(self, conn: Connection, ref: str) -> Datanet:
        # A reference no datanet can have (NUL, a lone surrogate) is simply not found, on both backends alike
        # (PostgreSQL and SQLite's driver would otherwise refuse the query itself).
        row = None
        if _usable(ref):
            column = datanets.c.id if ref.startswith("dn_") else datanets.c.slug
            row = conn.execute(select(datanets).where(column == ref)).one_or_none()
        if row is None:
            raise NotFound(f"no datanet {ref!r}; list datanets with: royalty datanet list", field="datanet")
        return _datanet(row)

    def list(self) -> list[Datanet]:
        with self.store.read() as conn:
            return [_datanet(r) for r in conn.execute(select(datanets).order_by(datanets.c.created_seq)).all()]

    def contribution(self, datanet: str, contribution_id: str) -> Contribution:
        dn = self.get(datanet)
        row = None
        if _usable(contribution_id):
            with self.store.read() as conn:
                row = conn.execute(
                    select(contributions).where(contributions.c.datanet_id == dn.id, contributions.c.id == contribution_id)
                ).one_or_none()
        if row is None:
            raise NotFound(f"no contribution {contribution_id} in datanet {dn.slug}", field="contribution")
        return _contribution(row)

    def contributions(
        self, datanet: str, *, status: str | None = None, contributor: str | None = None, after: int = -1, limit: int = 100
    ) -> list[Contribution]:
        """Contributions in arrival order, paginated by ordinal (``after``)."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status {status!r} is unknown: choose one of {', '.join(STATUSES)}", field="status")
        if not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be between 1 and 10000", field="limit")
        dn = self.get(datanet)
        after = max(-1, min(after, _ORDINAL_MAX))  # out-of-range cursors: before the first / after the last
        query = select(contributions).where(contributions.c.datanet_id == dn.id, contributions.c.ordinal > after)
        if status is not None:
            query = query.where(contributions.c.status == status)
        if contributor is not None:
            query = query.where(contributions.c.contributor_id == self._account(contributor).id)
        with self.store.read() as conn:
            rows = conn.execute(query.order_by(contributions.c.ordinal).limit(limit)).all()
        return [_contribution(r) for r in rows]

    def queue(self, datanet: str, *, actor: str, limit: int = 100, after: int = -1) -> list[Contribution]:
        """Pending contributions awaiting review (owners and curators only)."""
        dn = self.get(datanet)
        self._require_curator(dn, actor, "see the review queue")
        return self.contributions(dn.id, status="pending", after=after, limit=limit)

    def stats(self, datanet: str) -> dict[str, Any]:
        """Counts by status, acceptance rate, contributors and a leaderboard."""
        dn = self.get(datanet)
        c = contributions.c
        with self.store.read() as conn:
            by_status = dict(
                conn.execute(select(c.status, func.count()).where(c.datanet_id == dn.id).group_by(c.status)).all()
            )
            per = conn.execute(
                select(c.contributor_id, accounts.c.name, c.status, func.count(), func.sum(c.size_bytes))
                .join(accounts, accounts.c.id == c.contributor_id)
                .where(c.datanet_id == dn.id)
                .group_by(c.contributor_id, accounts.c.name, c.status)
            ).all()
            versions = conn.execute(
                select(datanet_versions.c.number, datanet_versions.c.size, datanet_versions.c.root)
                .where(datanet_versions.c.datanet_id == dn.id)
                .order_by(datanet_versions.c.number)
            ).all()
        people: dict[str, dict[str, Any]] = {}
        for account_id, name, status, count, size in per:
            entry = people.setdefault(account_id, {"account": account_id, "name": name, "bytes": 0, **{s: 0 for s in STATUSES}})
            entry[status] += int(count)
            if status == "accepted":
                entry["bytes"] += int(size or 0)
        for entry in people.values():
            decided = entry["accepted"] + entry["rejected"]
            entry["acceptance_rate"] = round(entry["accepted"] / decided, 4) if decided else None
        leaderboard = sorted(people.values(), key=lambda e: (-e["accepted"], -e["bytes"], e["name"]))
        counts = {s: int(by_status.get(s, 0)) for s in STATUSES}
        decided = counts["accepted"] + counts["rejected"]
        return {
            "datanet": dn.to_dict(),
            "counts": counts,
            "acceptance_rate": round(counts["accepted"] / decided, 4) if decided else None,
            "contributors": len(people),
            "leaderboard": leaderboard,
            "versions": [{"version": v.number, "size": int(v.size), "root": bytes(v.root).hex()} for v in versions],
        }

    # --- contribute --------------------------------------------------------------------------------------------

    def contribute_file(
        self,
        datanet: str,
        data: bytes,
        name: str,
        *,
        contributor: str,
        license: str | None = None,
        source: str | None = None,
        consent: str | None = None,
        tags: Sequence[str] | str | None = None,
        progress: Progress | None = None,
    ) -> ContributionReport:
        """Contribute every record of a file (JSONL, CSV, Parquet, .txt, .md; see ``formats``).

        Valid rows are kept even when others fail; each failure is reported with its line and reason. Exact
        duplicates (of earlier rows or of existing contributions) are reported, never stored twice, so
        re-running the same file changes nothing. Raises InvalidInput / PayloadTooLarge / NotFound for problems
        with the file or datanet as a whole, before anything is written.
        """
        dn = self.get(datanet)
        if len(data) > dn.limits.max_file_bytes:
            raise PayloadTooLarge(
                f"{name} is {len(data):,} bytes; this datanet accepts files up to {dn.limits.max_file_bytes:,} bytes "
                "(max_file_bytes)",
                field="file",
            )
        rows = read_rows(data, name, dn.kind, max_bytes=dn.limits.max_file_bytes)
        defaults = {"license": license, "source": source or name, "consent": consent, "tags": tags}
        return self._ingest(dn, contributor, defaults, rows, progress)

    def contribute_records(
        self,
        datanet: str,
        records: Iterable[dict[str, Any]],
        *,
        contributor: str,
        license: str | None = None,
        source: str | None = None,
        consent: str | None = None,
        tags: Sequence[str] | str | None = None,
    ) -> ContributionReport:
        """Contribute records given as dicts (record fields, optionally with metadata fields). Row numbers in the
        report are 1-based positions in ``records``."""
        dn = self.get(datanet)
        rows = (
            Row(i, r) if isinstance(r, dict) else Row(i, error="a record must be an object")
            for i, r in enumerate(records, start=1)
        )
        defaults = {"license": license, "source": source or "", "consent": consent, "tags": tags}
        return self._ingest(dn, contributor, defaults, rows, None)

    def _ingest(
        self, dn: Datanet, contributor: str, defaults: dict[str, Any], rows: Iterable[Row], progress: Progress | None
    ) -> ContributionReport:
        who = self._account(contributor)
        if who.kind == "system":
            raise PermissionDenied(f"{who.name} is a system account and cannot contribute", field="contributor")
        report = ContributionReport(datanet=dn.slug)
        seen: dict[str, int] = {}  # id -> first line in this call
        provenances: dict[Any, Provenance | RecordError] = {}
        batch: list[_Candidate] = []
        for row in rows:
            report.rows += 1
            if progress is not None and report.rows % 1000 == 0:
                progress(report.rows)
            if row.error is not None:
                report.reject(row.line, row.error, row.error_field)
                continue
            try:
                fields, meta = split_row(dn.kind, row.fields)
                record = make_record(dn.kind, fields)
            except (RecordError, InvalidInput) as exc:  # InvalidInput: canonical JSON refused a value
                report.reject(row.line, exc.message, exc.field)
                continue
            if len(record.content) > dn.limits.max_record_bytes:
                report.reject(
                    row.line,
                    f"record is {len(record.content):,} bytes; this datanet accepts at most "
                    f"{dn.limits.max_record_bytes:,} (max_record_bytes)",
                )
                continue
            # Rows of one file mostly carry the same metadata (often none): validate each distinct set once.
            try:
                key: Any = frozenset((k, type(v), v) for k, v in meta.items())
            except TypeError:  # a list value (tags): not hashable, not cached
                key = None
            provenance = provenances.get(key) if key is not None else None
            if provenance is None:
                try:
                    provenance = make_provenance(meta, defaults, dn.licenses)
                except RecordError as exc:
                    provenance = exc
                if key is not None:
                    provenances[key] = provenance
            if isinstance(provenance, RecordError):
                report.reject(row.line, provenance.message, provenance.field)
                continue
            if record.id in seen:
                report.duplicates.append({"line": row.line, "id": record.id, "duplicate_of_line": seen[record.id]})
                continue
            seen[record.id] = row.line
            batch.append(_Candidate(row.line, record.id, record.content, record.text(), provenance))
            if len(batch) >= BATCH:
                self._write_batch(dn, who, batch, report)
                batch = []
        if batch:
            self._write_batch(dn, who, batch, report)
        if progress is not None:
            progress(report.rows)
        return report

    def _write_batch(self, dn: Datanet, who: Account, batch: list[_Candidate], report: ContributionReport) -> None:
        threshold = dn.limits.threshold_bp
        # Signatures are CPU work: compute them before taking the write lock.
        sigs: list[np.ndarray | None] = (
            [dedup.signature(c.text) if dedup.has_words(c.text) else None for c in batch] if threshold else [None] * len(batch)
        )
        c = contributions.c
        try:
            with self.store.write() as conn:
                # Lock the datanet row: ordinals, quota and duplicate checks are decided under it.
                conn.execute(select(datanets.c.id).where(datanets.c.id == dn.id).with_for_update())
                existing = _existing(conn, dn.id, [cand.id for cand in batch])
                now = self.clock()
                used = conn.execute(
                    select(func.count()).where(c.datanet_id == dn.id, c.contributor_id == who.id, c.created_ms > now - DAY_MS)
                ).scalar_one()
                remaining = dn.limits.max_records_per_day - int(used)
                ordinal = int(conn.execute(select(func.coalesce(func.max(c.ordinal), -1)).where(c.datanet_id == dn.id)).scalar_one()) + 1
                index = self._near_index(conn, dn) if threshold else None
                status = "accepted" if dn.policy == "open" else "pending"
                rows: list[list[Any]] = []
                events: list[tuple[str, dict[str, Any], str | None]] = []
                tag_cache: dict[tuple[str, ...], str] = {}
                added: set[str] = set()  # ids written by this batch (not yet inserted: rows go in at the end)

                def tags_json(tags: tuple[str, ...]) -> str:
                    if tags not in tag_cache:
                        tag_cache[tags] = json.dumps(list(tags))
                    return tag_cache[tags]

                for cand, sig in zip(batch, sigs):
                    first = existing.get(cand.id)
                    if first is not None:
                        report.duplicates.append({"line": cand.line, "id": cand.id, **first})
                        continue
                    if remaining <= 0:
                        report.reject(
                            cand.line,
                            f"over quota: {dn.limits.max_records_per_day:,} contributions per account per day on "
                            f"{dn.slug} (max_records_per_day); try again tomorrow",
                        )
                        continue
                    near = (
                        self._live_match(conn, dn, index, sig, added)
                        if index is not None and sig is not None
                        else None
                    )
                    if near is not None and dn.policy == "open":
                        report.reject(
                            cand.line,
                            f"near-duplicate of contribution {near[0]} ({near[1] / 100:.0f}% similar; this datanet "
                            f"refuses >= {threshold / 100:.0f}%)",
                        )
                        continue
                    data: dict[str, Any] = {
                        "datanet": dn.id,
                        "id": cand.id,
                        "ordinal": ordinal,
                        "contributor": who.id,
                        "status": status,
                        "license": cand.provenance.license,
                        "source": cand.provenance.source,
                        "consent": cand.provenance.consent,
                        "tags": list(cand.provenance.tags),
                        "size": len(cand.content),
                    }
                    if near is not None:
                        data["near_duplicate_of"], data["near_duplicate_score_bp"] = near
                        report.flagged.append(
                            {"line": cand.line, "id": cand.id, "near_duplicate_of": near[0], "similarity": near[1] / 10_000}
                        )
                    events.append(("contribution.added", data, who.id))
                    rows.append(
                        [
                            dn.id, cand.id, ordinal, who.id, status, cand.provenance.license, cand.provenance.source,
                            cand.provenance.consent, tags_json(cand.provenance.tags), len(cand.content),
                            cand.content, None if sig is None else dedup.to_bytes(sig),
                            near[0] if near else None, near[1] if near else None, now,
                        ]
                    )  # fmt: skip
                    if index is not None and sig is not None:
                        index.add(cand.id, sig)
                    (report.accepted if status == "accepted" else report.pending).append(cand.id)
                    existing[cand.id] = {"duplicate_of": cand.id, "contributor": who.id, "status": status}
                    added.add(cand.id)
                    ordinal += 1
                    remaining -= 1
                appended = self.journal.append_many(conn, events)
                insert_rows(
                    conn,
                    "contributions",
                    ("datanet_id", "id", "ordinal", "contributor_id", "status", "license", "source", "consent", "tags",
                     "size_bytes", "content", "minhash", "near_duplicate_of", "near_duplicate_score", "created_ms",
                     "created_seq", "updated_seq"),
                    [tuple(row + [event.seq, event.seq]) for row, event in zip(rows, appended)],
                )  # fmt: skip
                if index is not None:
                    index.high_water = max(index.high_water, ordinal - 1)
        except BaseException:
            # The cached index saw rows that were rolled back; rebuild it from the database next time.
            self._indexes.pop(dn.id, None)
            raise

    def _near_index(self, conn: Connection, dn: Datanet) -> dedup.NearDuplicateIndex:
        """The datanet's near-duplicate index, brought up to date with rows other processes added."""
        index = self._indexes.get(dn.id)
        if index is None or index.threshold_bp != dn.limits.threshold_bp:
            index = self._indexes[dn.id] = dedup.NearDuplicateIndex(dn.limits.threshold_bp)
        c = contributions.c
        rows = conn.execute(
            select(c.id, c.ordinal, c.minhash).where(
                c.datanet_id == dn.id,
                c.ordinal > index.high_water,
                c.status.in_(("pending", "accepted")),
                c.minhash.is_not(None),
            )
        ).all()
        for row in rows:
            index.add(row.id, dedup.from_bytes(bytes(row.minhash)))
            index.high_water = max(index.high_water, int(row.ordinal))
        return index

    def _live_match(
        self,
        conn: Connection,
        dn: Datanet,
        index: dedup.NearDuplicateIndex,
        sig: np.ndarray,
        added: set[str],
    ) -> tuple[str, int] | None:
        """The most similar live contribution at or above the threshold. The index keeps entries that were since
        withdrawn or rejected (and, after another thread's rolled-back batch, ones never stored): they are
        skipped, so a dead best match does not hide a live one behind it. ``added`` holds the ids of this
        transaction, which count as live before their rows are inserted."""
        found = index.matches(sig)
        if not found:
            return None
        c = contributions.c
        keys = [key for key, _ in found[:500]]
        live = {
            row.id
            for row in conn.execute(
                select(c.id).where(c.datanet_id == dn.id, c.id.in_(keys), c.status.in_(("pending", "accepted")))
            ).all()
        }
        for key, score in found[:500]:
            if key in live or key in added:
                return key, score
        return None

    # --- curate, withdraw, purge -------------------------------------------------------------------------------

    def review(
        self,
        datanet: str,
        *,
        actor: str,
        accept: Sequence[str] = (),
        reject: Sequence[str] = (),
        reason: str | None = None,
    ) -> dict[str, list[str]]:
        """Accept or reject pending contributions (owners and curators). Rejections need a reason. All ids are
        checked before any is changed: one bad id changes nothing."""
        dn = self.get(datanet)
        reviewer = self._require_curator(dn, actor, "review contributions")
        if not accept and not reject:
            raise InvalidInput("nothing to review: pass contribution ids to accept or reject", field="accept")
        if reason and "\x00" in reason:
            raise InvalidInput("reason contains a NUL character", field="reason")
        if reason and not _encodable(reason):
            raise InvalidInput("reason is not valid UTF-8 text", field="reason")
        if reject and not (reason and reason.strip()):
            raise InvalidInput("rejecting needs a reason (--reason) that the contributor will see", field="reason")
        both = set(accept) & set(reject)
        if both:
            raise InvalidInput(f"contribution {sorted(both)[0]} is both accepted and rejected", field="accept")
        decisions = [(cid, "accepted") for cid in dict.fromkeys(accept)] + [(cid, "rejected") for cid in dict.fromkeys(reject)]
        wanted = [cid for cid, _ in decisions if _usable(cid)]
        with self.store.write() as conn:
            found: dict[str, str] = {}
            # In chunks (a bound parameter per id; PostgreSQL allows 65,535), and locked (FOR UPDATE), so that a
            # concurrent review or withdrawal cannot slip between reading a status and changing it.
            for lo in range(0, len(wanted), 500):
                rows = conn.execute(
                    select(contributions.c.id, contributions.c.status)
                    .where(contributions.c.datanet_id == dn.id, contributions.c.id.in_(wanted[lo : lo + 500]))
                    .with_for_update()
                ).all()
                found.update((r.id, r.status) for r in rows)
            for cid, _ in decisions:
                if cid not in found:
                    raise NotFound(f"no contribution {cid} in datanet {dn.slug}", field="id")
                if found[cid] != "pending":
                    raise Conflict(f"contribution {cid} is {found[cid]}, not pending; only pending ones can be reviewed", field="id")
            for cid, status in decisions:
                note = reason.strip() if reason else None
                event = self.journal.append(
                    conn,
                    "contribution.reviewed",
                    {"datanet": dn.id, "id": cid, "status": status, "reason": note},
                    actor=reviewer.id,
                )
                conn.execute(
                    update(contributions)
                    .where(contributions.c.datanet_id == dn.id, contributions.c.id == cid)
                    .values(status=status, reason=note, reviewed_by=reviewer.id, updated_seq=event.seq)
                )
        return {"accepted": [c for c, s in decisions if s == "accepted"], "rejected": [c for c, s in decisions if s == "rejected"]}

    def withdraw(self, datanet: str, contribution_id: str, *, actor: str) -> Contribution:
        """The contributor takes a contribution back: it is left out of every later version."""
        dn = self.get(datanet)
        who = self._account(actor)
        with self.store.write() as conn:
            row = self._own_contribution(conn, dn, contribution_id, who, "withdraw")
            if row.status == "withdrawn":
                return _contribution(row)
            event = self.journal.append(conn, "contribution.withdrawn", {"datanet": dn.id, "id": contribution_id}, actor=who.id)
            conn.execute(
                update(contributions)
                .where(contributions.c.datanet_id == dn.id, contributions.c.id == contribution_id)
                .values(status="withdrawn", updated_seq=event.seq)
            )
        return self.contribution(dn.id, contribution_id)

    def purge(self, datanet: str, contribution_id: str, *, actor: str) -> Contribution:
        """Erase a withdrawn contribution's content. The id stays as a tombstone, so published versions (whose
        roots are over ids) still verify."""
        dn = self.get(datanet)
        who = self._account(actor)
        with self.store.write() as conn:
            row = self._own_contribution(conn, dn, contribution_id, who, "purge")
            if row.status != "withdrawn":
                raise Conflict(f"withdraw contribution {contribution_id} before purging it", field="id")
            if row.content is not None:
                event = self.journal.append(conn, "contribution.purged", {"datanet": dn.id, "id": contribution_id}, actor=who.id)
                conn.execute(
                    update(contributions)
                    .where(contributions.c.datanet_id == dn.id, contributions.c.id == contribution_id)
                    .values(content=None, minhash=None, updated_seq=event.seq)
                )
        self._indexes.pop(dn.id, None)
        return self.contribution(dn.id, contribution_id)

    def _own_contribution(self, conn: Connection, dn: Datanet, cid: str, who: Account, verb: str) -> Any:
        row = None
        if _usable(cid):
            # Locked: a review committed meanwhile must not be overwritten by a withdrawal read before it.
            row = conn.execute(
                select(contributions)
                .where(contributions.c.datanet_id == dn.id, contributions.c.id == cid)
                .with_for_update()
            ).one_or_none()
        if row is None:
            raise NotFound(f"no contribution {cid} in datanet {dn.slug}", field="id")
        if row.contributor_id != who.id:
            raise PermissionDenied(f"only the contributor may {verb} contribution {cid}", field="id")
        return row

    # --- versions and export (implemented in versions.py and export.py) ---------------------------------------

    def publish(self, datanet: str, *, actor: str) -> versions.DatanetVersion:
        return versions.publish(self, datanet, actor=actor)

    def version(self, datanet: str, number: int | None = None) -> versions.DatanetVersion:
        return versions.get_version(self, datanet, number)

    def versions(self, datanet: str) -> list[versions.DatanetVersion]:
        return versions.list_versions(self, datanet)

    def members(self, datanet: str, number: int) -> list[str]:
        return versions.member_ids(self, datanet, number)

    def proof(self, datanet: str, contribution_id: str, *, version: int | None = None) -> dict[str, Any]:
        return versions.proof(self, datanet, contribution_id, version)

    def export(self, datanet: str, *, version: int, format: str, out: BinaryIO) -> int:
        return export.export(self, datanet, version, format, out)

    def rows(self, datanet: str, *, version: int) -> Iterator[dict[str, Any]]:
        return export.rows(self, datanet, version)

    def dataset(self, datanet: str, *, version: int) -> Any:
        """A Hugging Face ``datasets.Dataset`` of the version's rows."""
        return export.dataset(self, datanet, version)

    # --- authorization -----------------------------------------------------------------------------------------

    def role_of(self, dn: Datanet, account: Account) -> str | None:
        if account.has_role("owner", _scope(dn.id)):
            return "owner"
        if account.has_role("curator", _scope(dn.id)):
            return "curator"
        return None

    def _account(self, ref: str) -> Account:
        """An account by id or name; a reference no account can have (NUL, a lone surrogate) is not found, on
        both backends alike."""
        if not _usable(ref):
            raise NotFound(f"no account {ref!r}; list accounts with: royalty account list", field="account")
        return self.accounts.get(ref)

    def _require_owner(self, dn: Datanet, actor: str, action: str) -> Account:
        who = self._account(actor)
        if self.role_of(dn, who) != "owner":
            raise PermissionDenied(f"only the owner of {dn.slug} may {action}")
        return who

    def _require_curator(self, dn: Datanet, actor: str, action: str) -> Account:
        who = self._account(actor)
        if self.role_of(dn, who) is None:
            raise PermissionDenied(f"only the owner or a curator of {dn.slug} may {action}")
        return who


def _scope(datanet_id: str) -> str:
    return f"datanet:{datanet_id}"


def _encodable(text: str) -> bool:
    """False for text with a lone surrogate (not UTF-8): SQLite's driver cannot bind it, the journal refuses it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _usable(ref: Any) -> bool:
    """Whether ``ref`` can be looked up at all: text without NUL (PostgreSQL refuses it in a query) and valid
    UTF-8. Lookups of anything else answer "not found" without asking the database, so both backends agree."""
    return isinstance(ref, str) and "\x00" not in ref and _encodable(ref)


def _existing(conn: Connection, datanet_id: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Existing contributions among ``ids``: where each duplicate points (the first one keeps the credit)."""
    found: dict[str, dict[str, Any]] = {}
    c = contributions.c
    for lo in range(0, len(ids), 500):
        rows = conn.execute(
            select(c.id, c.contributor_id, c.status).where(and_(c.datanet_id == datanet_id, c.id.in_(ids[lo : lo + 500])))
        ).all()
        for row in rows:
            found[row.id] = {"duplicate_of": row.id, "contributor": row.contributor_id, "status": row.status}
    return found


def _datanet(row: Any) -> Datanet:
    return Datanet(
        id=row.id,
        slug=row.slug,
        title=row.title,
        description=row.description,
        kind=row.kind,
        licenses=tuple(json.loads(row.licenses)),
        policy=row.policy,
        tags=tuple(json.loads(row.tags)),
        owner_id=row.owner_id,
        limits=DatanetLimits.from_json(json.loads(row.limits)),
        created_ms=int(row.created_ms),
        created_seq=int(row.created_seq),
    )


def _contribution(row: Any) -> Contribution:
    return Contribution(
        datanet_id=row.datanet_id,
        id=row.id,
        ordinal=int(row.ordinal),
        contributor_id=row.contributor_id,
        status=row.status,
        license=row.license,
        source=row.source,
        consent=row.consent,
        tags=tuple(json.loads(row.tags)),
        size_bytes=int(row.size_bytes),
        record=None if row.content is None else json.loads(bytes(row.content)),
        near_duplicate_of=row.near_duplicate_of,
        near_duplicate_score=row.near_duplicate_score,
        reason=row.reason,
        created_ms=int(row.created_ms),
        created_seq=int(row.created_seq),
    )
