"""The adapter artifact (``write_artifact``) and the node's adapter registry (``node.adapters``).

An artifact is a directory that plain ``peft`` loads (``adapter_config.json``, ``adapter_model.safetensors``) plus
``README.md``, a model card with the Hugging Face YAML header, and ``royalty.json``, the manifest (format
``royalty.adapter/1``): base model identity and weight hash, datanet versions with their Merkle roots, the full
config, metrics, library versions, owner, price, lineage and the SHA-256 of every other file.

Registering an artifact copies it into ``<home>/adapters/<name>/v<N>/`` (hashing while copying, so what is
stored is exactly what was checked), then in one transaction writes the row, journals ``adapter.registered``
and charges the owner the registration fee. The manifest's hash (SHA-256 of the ``royalty.json`` bytes) is in
the row and in the journal event, so ``verify`` can tell a changed file, a changed manifest and a changed row
apart, and checks each datanet root against the ``datanet.published`` event that journaled it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Connection, insert, select, text, update

from ..accounts import Accounts
from ..accounts.service import Account
from ..errors import Conflict, InvalidInput, NotFound, PermissionDenied
from ..journal.log import Event, Journal
from ..ledger.amounts import format_amount, parse_amount
from ..ledger.fees import Fees
from ..store import Store
from ..store.schema import adapters, datanet_versions

FORMAT = "royalty.adapter/1"
MANIFEST = "royalty.json"
CARD = "README.md"
# What every artifact must hold besides the manifest: plain peft loads the first two, the card is the README.
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors", CARD)
STATUSES = ("registered", "published", "deprecated")
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERSION_MAX = 2**31 - 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Adapter:
    """A registered adapter version. ``path`` is its directory in the node's home; ``manifest`` its royalty.json.
    Prices are base units of OPEN per 1,000 tokens."""

    id: str
    name: str
    version: int
    owner: str  # account id
    status: str  # registered | published | deprecated
    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    base_model: str
    base_weights_sha256: str
    price_in_per_1k: int
    price_out_per_1k: int
    created_ms: int
    event_seq: int  # the adapter.registered journal event
    parent_id: str | None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """The adapter without its manifest (``manifest`` is separate: it can be large)."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "owner": self.owner,
            "status": self.status,
            "path": str(self.path),
            "manifest_sha256": self.manifest_sha256,
            "base_model": self.base_model,
            "base_weights_sha256": self.base_weights_sha256,
            "price": {"input_per_1k": format_amount(self.price_in_per_1k), "output_per_1k": format_amount(self.price_out_per_1k)},
            "datanets": [f"{d['slug']}@{d['version']}" for d in self.manifest.get("datanets", [])],
            "created_ms": self.created_ms,
            "event_seq": self.event_seq,
            "parent_id": self.parent_id,
        }


# --------------------------------------------------------------------------------------------------------------
# the artifact
# --------------------------------------------------------------------------------------------------------------


def write_artifact(adapter_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Complete a saved PEFT adapter directory into a royalty artifact and return the final manifest.

    Writes ``README.md`` (the model card, replacing the one peft writes) and then ``royalty.json``: ``manifest``
    (the fields of format ``royalty.adapter/1`` except ``files``) plus ``files``, the SHA-256 of every other file
    in the directory. Both files are written to a temporary name and renamed into place.

    Raises:
        InvalidInput: the directory is missing, or the manifest holds a number JSON cannot carry (NaN, inf).
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise InvalidInput(f"{adapter_dir}: no such adapter directory", field="adapter_dir")
    final = {key: value for key, value in manifest.items() if key != "files"}
    final["format"] = FORMAT
    _write_atomic(adapter_dir / CARD, model_card(final).encode("utf-8"))
    final["files"] = {name: file_sha256(adapter_dir / name) for name in _artifact_files(adapter_dir)}
    _write_atomic(adapter_dir / MANIFEST, manifest_bytes(final))
    return final


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes of ``royalty.json``: sorted keys, two-space indent, UTF-8, a final newline."""
    try:
        body = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidInput(
            "the manifest holds NaN or infinity (a diverged loss?); JSON cannot carry it: check the run's metrics",
            field="manifest",
        ) from None
    return (body + "\n").encode("utf-8")


def model_card(manifest: dict[str, Any]) -> str:
    """README.md for an adapter: the Hub's YAML header (base_model, library_name, datasets, license, tags) and a
    summary a person can read: base model, data with roots, configuration, metrics, price, how to load it."""
    base = manifest.get("base_model") or {}
    datanets = manifest.get("datanets") or []
    config = manifest.get("config") or {}
    header = {
        "base_model": base.get("name", "unknown"),
        "library_name": "peft",
        "datasets": [f"{d.get('slug')}@{d.get('version')}" for d in datanets],
        "license": (config.get("output") or {}).get("license", "other"),
        "tags": ["royalty", "lora"],
    }
    name = manifest.get("name", "adapter")
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip("\n"),
        "---",
        "",
        f"# {name}",
        "",
        (f"A LoRA adapter for `{header['base_model']}`, fine-tuned by royalty ModelFactory on "
         f"{', '.join(header['datasets']) or 'no datanet'}. Everything below is also in `{MANIFEST}`, with the "
         "SHA-256 of every file."),
        "",
        "## Base model",
        "",
        f"- name: `{base.get('name', 'unknown')}`",
        f"- architecture: {base.get('architecture', 'unknown')}, {_count(base.get('num_parameters'))} parameters",
        f"- weights SHA-256: `{base.get('weights_sha256', 'unknown')}`",
        "",
        "## Training data",
        "",
        "| datanet | version | Merkle root | examples (train / eval) | weight |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in datanets:
        lines.append(f"| {d.get('slug')} | {d.get('version')} | `{d.get('root')}` | "
                     f"{d.get('examples_train', '?')} / {d.get('examples_eval', '?')} | {d.get('weight', 1)} |")
    lines += ["", "## Configuration", ""]
    for section in ("lora", "train", "data"):
        values = config.get(section)
        if isinstance(values, dict):
            lines.append(f"- {section}: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
    if manifest.get("config_sha256"):
        lines.append(f"- config SHA-256: `{manifest['config_sha256']}`")
    metrics = manifest.get("metrics") or {}
    lines += ["", "## Metrics", ""]
    lines += [f"- {k}: {_short(v)}" for k, v in metrics.items() if k != "eval"]
    evaluation = metrics.get("eval")
    if isinstance(evaluation, dict):
        lines += [f"- held-out {k}: {_short(v)}" for k, v in evaluation.items() if not isinstance(v, (list, dict))]
    price = manifest.get("price") or {}
    lines += [
        "",
        "## Price",
        "",
        (f"{price.get('input_per_1k', '0')} OPEN per 1,000 input tokens, {price.get('output_per_1k', '0')} OPEN per "
         "1,000 output tokens, paid to the owner and the data contributors."),
        "",
        "## Use it",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({base.get('name', 'BASE')!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({base.get('name', 'BASE')!r})",
        "model = PeftModel.from_pretrained(base, \"path/to/this/directory\")",
        "```",
        "",
        (f"Check it on the node that registered it: `royalty adapter verify {name}@VERSION` recomputes every "
         "file's hash and checks the datanet roots against the node's signed journal."),
        "",
    ]
    return "\n".join(lines)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


# --------------------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------------------


class Adapters:
    """The adapter registry (``node.adapters``)."""

    def __init__(self, store: Store, journal: Journal, accounts: Accounts, fees: Fees, home: Path,
                 clock: Callable[[], int]) -> None:
        self.store = store
        self.journal = journal
        self.accounts = accounts
        self.fees = fees
        self.home = Path(home)
        self.root = self.home / "adapters"
        self.clock = clock

    # --- register ----------------------------------------------------------------------------------------------

    def register(self, adapter_dir: Path, *, owner: str, actor: str) -> Adapter:
        """Register the artifact in ``adapter_dir`` (made by ``write_artifact``) as the next version of its name.

        Checks the manifest (format, name, owner, base model, datanet versions and roots on this node, price,
        lineage) and every file's hash, copies the files into ``<home>/adapters/<name>/v<N>/`` and then, in one
        transaction, writes the row, journals ``adapter.registered`` and charges ``owner`` the registration fee.
        Registering the identical manifest again returns the existing adapter (nothing copied, nothing charged).

        Raises:
            InvalidInput: a problem with the artifact (all of them, in one message).
            PermissionDenied: ``actor`` is neither ``owner`` nor an admin, or the name belongs to someone else.
            InsufficientFunds: the owner cannot pay the fee; then nothing is stored, journaled or charged.
        """
        owner_account = self.accounts.get(owner)
        acting = self.accounts.get(actor)
        if acting.id != owner_account.id and not acting.is_admin:
            raise PermissionDenied(f"{acting.name} may not register adapters for {owner_account.name}; act as the owner")
        source = Path(adapter_dir)
        raw, manifest = _read_manifest(source)
        manifest_sha = hashlib.sha256(raw).hexdigest()
        with self.store.read() as conn:
            fields = self._check_manifest_in(conn, manifest, owner_account)
            existing = self._existing_in(conn, fields["name"], manifest_sha, owner_account)
        if existing is not None:
            return existing

        name_dir = self.root / fields["name"]
        name_dir.mkdir(parents=True, exist_ok=True)
        staging = name_dir / f".tmp-{secrets.token_hex(6)}"
        target: Path | None = None
        try:
            _copy_checked(source, staging, manifest["files"], raw)
            with self.store.write() as conn:
                if conn.dialect.name == "postgresql":
                    # Versions of one name are numbered and their directories renamed one registration at a time.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(fields["name"])})
                existing = self._existing_in(conn, fields["name"], manifest_sha, owner_account)
                if existing is not None:
                    return existing
                latest = conn.execute(
                    select(adapters.c.version).where(adapters.c.name == fields["name"])
                    .order_by(adapters.c.version.desc()).limit(1)
                ).scalar_one_or_none()
                version = 1 if latest is None else int(latest) + 1
                adapter_id = "ad_" + secrets.token_hex(8)
                target = name_dir / f"v{version}"
                if target.exists():
                    # Left by a registration that crashed before its commit: no row names it (we hold the lock).
                    shutil.rmtree(target)
                os.rename(staging, target)
                _fsync_dir(name_dir)
                event = self.journal.append(conn, "adapter.registered", {
                    "id": adapter_id, "name": fields["name"], "version": version, "owner": owner_account.id,
                    "manifest_sha256": manifest_sha, "base_weights_sha256": fields["base_weights_sha256"],
                    "datanets": [{"datanet_id": d["datanet_id"], "slug": d["slug"], "version": d["version"],
                                  "root": d["root"]} for d in manifest["datanets"]],
                    "price": {"input_per_1k": fields["price_in"], "output_per_1k": fields["price_out"]},
                    "parent_id": fields["parent_id"],
                }, actor=acting.id)
                conn.execute(insert(adapters).values(
                    id=adapter_id, name=fields["name"], version=version, owner_id=owner_account.id, status="registered",
                    base_model=fields["base_model"], base_weights_sha256=fields["base_weights_sha256"],
                    manifest_sha256=manifest_sha, manifest=raw.decode("utf-8"), price_in_per_1k=fields["price_in"],
                    price_out_per_1k=fields["price_out"], path=target.relative_to(self.home).as_posix(),
                    created_ms=self.clock(), event_seq=event.seq, parent_id=fields["parent_id"],
                ))
                self.fees.charge_adapter_registration_in(conn, owner_account.id, adapter_id, actor=acting.id)
        except BaseException:
            # The transaction did not commit: no row, event or fee exists, so neither may the files.
            if target is not None:
                shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_if_empty(name_dir)
        return self.get(adapter_id)

    def _check_manifest_in(self, conn: Connection, manifest: Any, owner: Account) -> dict[str, Any]:
        """Every problem with a manifest, raised together; the normalised fields the row needs otherwise."""
        problems: list[str] = []
        if not isinstance(manifest, dict):
            raise InvalidInput(f"{MANIFEST}: not a JSON object", field="manifest")
        out: dict[str, Any] = {"parent_id": None}
        if manifest.get("format") != FORMAT:
            problems.append(f"format: expected {FORMAT!r}, got {manifest.get('format')!r}")
        name = manifest.get("name")
        if not isinstance(name, str) or not _SLUG.fullmatch(name):
            problems.append(f"name: {name!r} is not a slug (1-64 lowercase letters, digits and '-')")
        out["name"] = name
        if manifest.get("owner") != owner.id:
            problems.append(f"owner: the manifest names {manifest.get('owner')!r}, not {owner.name} ({owner.id}); "
                            "register it as the account that trained it")
        base = manifest.get("base_model")
        if not isinstance(base, dict) or not isinstance(base.get("name"), str) or not base["name"]:
            problems.append("base_model: needs name, architecture, weights_sha256 and num_parameters")
        elif not isinstance(base.get("weights_sha256"), str) or not _SHA256.fullmatch(base["weights_sha256"]):
            problems.append("base_model.weights_sha256: must be 64 lowercase hex digits")
        else:
            out["base_model"], out["base_weights_sha256"] = base["name"], base["weights_sha256"]
        problems += self._datanet_problems_in(conn, manifest.get("datanets"))
        price = manifest.get("price")
        if not isinstance(price, dict):
            problems.append("price: needs input_per_1k and output_per_1k (decimal OPEN strings)")
        else:
            for key, field in (("input_per_1k", "price_in"), ("output_per_1k", "price_out")):
                try:
                    out[field] = parse_amount(price.get(key), f"price.{key}", allow_zero=True)
                except InvalidInput as exc:
                    problems.append(exc.message)
        if not isinstance(manifest.get("config"), dict):
            problems.append("config: must be the resolved training config (an object)")
        files = manifest.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, str) and _SHA256.fullmatch(v) for v in files.values()):
            problems.append("files: must map each file name to its SHA-256 (64 lowercase hex digits); "
                            "write the artifact with write_artifact")
        else:
            problems += [f"files: {f} is missing (a peft adapter needs it)" for f in REQUIRED_FILES if f not in files]
            problems += [f"files: {f!r} is not a plain relative file name" for f in files if not _safe_name(f)]
        parent = (manifest.get("lineage") or {}).get("parent") if isinstance(manifest.get("lineage"), dict) else None
        if parent is not None:
            row = conn.execute(select(adapters.c.id, adapters.c.manifest_sha256).where(
                adapters.c.id == (parent.get("id") if isinstance(parent, dict) else None))).one_or_none()
            if row is None:
                problems.append(f"lineage.parent: no adapter {parent!r} is registered on this node")
            elif row.manifest_sha256 != parent.get("manifest_sha256"):
                problems.append(f"lineage.parent: adapter {row.id}'s manifest hash differs from the one recorded")
            else:
                out["parent_id"] = row.id
        if problems:
            raise InvalidInput(f"{MANIFEST} of {name or 'the adapter'}: " + "; ".join(problems), field="manifest")
        return out

    def _datanet_problems_in(self, conn: Connection, datanets: Any) -> list[str]:
        if not isinstance(datanets, list) or not datanets:
            return ["datanets: must list the datanet versions the adapter was trained on"]
        problems = []
        for i, d in enumerate(datanets):
            if not isinstance(d, dict) or not isinstance(d.get("datanet_id"), str) or not isinstance(d.get("slug"), str) \
                    or type(d.get("version")) is not int or not 1 <= d["version"] <= _VERSION_MAX \
                    or not isinstance(d.get("root"), str):
                problems.append(f"datanets[{i}]: needs slug, datanet_id, version (>= 1) and root")
                continue
            row = conn.execute(select(datanet_versions.c.root).where(
                datanet_versions.c.datanet_id == d["datanet_id"], datanet_versions.c.number == d["version"],
            )).one_or_none()
            if row is None:
                problems.append(f"datanets[{i}]: {d['slug']}@{d['version']} is not a published version on this node")
            elif bytes(row.root).hex() != d["root"]:
                problems.append(f"datanets[{i}]: {d['slug']}@{d['version']} has root {bytes(row.root).hex()[:16]}… on "
                                f"this node, not {d['root'][:16]}…")
        return problems

    def _existing_in(self, conn: Connection, name: str, manifest_sha: str, owner: Account) -> Adapter | None:
        """The version of ``name`` with this exact manifest, if registered; refuses a name owned by someone else."""
        rows = conn.execute(select(adapters).where(adapters.c.name == name).order_by(adapters.c.version)).all()
        if rows and rows[0].owner_id != owner.id:
            raise PermissionDenied(
                f"adapter name {name!r} belongs to another account; only its owner registers new versions "
                "(choose another output.name)", field="name")
        same = [r for r in rows if r.manifest_sha256 == manifest_sha]
        return self._adapter(same[0]) if same else None

    # --- read --------------------------------------------------------------------------------------------------

    def get(self, ref: str) -> Adapter:
        """An adapter by ``name`` (its latest version), ``name@N`` or id (``ad_…``)."""
        query = select(adapters)
        if ref.startswith("ad_"):
            query = query.where(adapters.c.id == ref)
        else:
            name, _, number = ref.partition("@")
            query = query.where(adapters.c.name == name)
            if number:
                if not number.isdigit() or not 1 <= int(number) <= _VERSION_MAX:
                    raise InvalidInput(f"adapter {ref!r}: the version after '@' must be a number >= 1", field="adapter")
                query = query.where(adapters.c.version == int(number))
            query = query.order_by(adapters.c.version.desc()).limit(1)
        with self.store.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no adapter {ref!r} is registered; see: royalty adapter list", field="adapter")
        return self._adapter(row)

    def list(self, *, owner: str | None = None, status: str | None = None) -> list[Adapter]:
        """Every registered version, by name then version; optionally one owner's or one status's."""
        query = select(adapters).order_by(adapters.c.name, adapters.c.version)
        if owner is not None:
            query = query.where(adapters.c.owner_id == self.accounts.get(owner).id)
        if status is not None:
            if status not in STATUSES:
                raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}", field="status")
            query = query.where(adapters.c.status == status)
        with self.store.read() as conn:
            return [self._adapter(r) for r in conn.execute(query).all()]

    def _adapter(self, row: Any) -> Adapter:
        return Adapter(
            id=row.id, name=row.name, version=int(row.version), owner=row.owner_id, status=row.status,
            path=self.home / row.path, manifest=json.loads(row.manifest), manifest_sha256=row.manifest_sha256,
            base_model=row.base_model, base_weights_sha256=row.base_weights_sha256,
            price_in_per_1k=int(row.price_in_per_1k), price_out_per_1k=int(row.price_out_per_1k),
            created_ms=int(row.created_ms), event_seq=int(row.event_seq), parent_id=row.parent_id,
        )

    # --- verify ------------------------------------------------------------------------------------------------

    def verify(self, ref: str) -> dict[str, Any]:
        """Recompute everything an adapter's integrity rests on; ``{"ok", "problems", ...}``, never raises for a
        problem found. Checked: the row's manifest text against its hash and against the adapter.registered
        event; ``royalty.json`` on disk against that hash; every file's SHA-256 against the registered manifest
        (a changed, missing or extra file is named); each datanet root against its datanet.published event."""
        adapter = self.get(ref)
        problems: list[str] = []
        with self.store.read() as conn:
            text_now = conn.execute(select(adapters.c.manifest).where(adapters.c.id == adapter.id)).scalar_one()
        registered = text_now.encode("utf-8")
        if hashlib.sha256(registered).hexdigest() != adapter.manifest_sha256:
            problems.append("the registered manifest no longer matches its hash: the database row was changed")
        event = self._event(adapter.event_seq)
        if event is None or event.type != "adapter.registered" or event.data.get("id") != adapter.id \
                or event.data.get("manifest_sha256") != adapter.manifest_sha256:
            problems.append(f"journal event {adapter.event_seq} does not register this adapter with this manifest hash")
        on_disk = adapter.path / MANIFEST
        if not on_disk.is_file():
            problems.append(f"{MANIFEST}: missing from {adapter.path}")
        elif file_sha256(on_disk) != adapter.manifest_sha256:
            problems.append(f"{MANIFEST}: changed since registration (SHA-256 differs from the journaled one)")
        expected: dict[str, str] = adapter.manifest.get("files", {})
        present = set(_artifact_files(adapter.path)) if adapter.path.is_dir() else set()
        for name, digest in sorted(expected.items()):
            if name not in present:
                problems.append(f"{name}: missing")
            elif (found := file_sha256(adapter.path / name)) != digest:
                problems.append(f"{name}: SHA-256 {found[:16]}… differs from the registered {digest[:16]}…")
        problems += [f"{name}: not part of the registered adapter" for name in sorted(present - expected.keys())]
        datanets = [self._check_root(d) for d in adapter.manifest.get("datanets", [])]
        problems += [d["problem"] for d in datanets if d["problem"]]
        return {
            "ok": not problems, "adapter": adapter.ref, "id": adapter.id, "manifest_sha256": adapter.manifest_sha256,
            "files": len(expected), "datanets": datanets, "problems": problems,
        }

    def _check_root(self, d: dict[str, Any]) -> dict[str, Any]:
        """One datanet of a manifest against the journal: the datanet.published event of that version."""
        ref = f"{d.get('slug')}@{d.get('version')}"
        result: dict[str, Any] = {"datanet": ref, "root": d.get("root"), "event_seq": None, "problem": None}
        with self.store.read() as conn:
            row = conn.execute(select(datanet_versions.c.root, datanet_versions.c.created_seq).where(
                datanet_versions.c.datanet_id == d.get("datanet_id"), datanet_versions.c.number == d.get("version"),
            )).one_or_none()
        if row is None:
            result["problem"] = f"datanet {ref}: no such published version on this node"
            return result
        event = self._event(int(row.created_seq))
        result["event_seq"] = int(row.created_seq)
        data = event.data if event is not None else {}
        if event is None or event.type != "datanet.published" or data.get("datanet") != d.get("datanet_id") \
                or data.get("version") != d.get("version"):
            result["problem"] = f"datanet {ref}: journal event {row.created_seq} is not its datanet.published event"
        elif data.get("root") != d.get("root"):
            result["problem"] = (f"datanet {ref}: root {str(d.get('root'))[:16]}… in the manifest differs from "
                                 f"{str(data.get('root'))[:16]}… journaled at seq {event.seq}")
        elif bytes(row.root).hex() != data.get("root"):
            result["problem"] = f"datanet {ref}: the stored version root differs from the one journaled at seq {event.seq}"
        return result

    def _event(self, seq: int) -> Event | None:
        try:
            return self.journal.event(seq)
        except NotFound:
            return None

    # --- status ------------------------------------------------------------------------------------------------

    def publish(self, ref: str, *, actor: str) -> Adapter:
        """Make a registered adapter public (owner or admin); journals ``adapter.published``."""
        return self._move(ref, actor, "published", ("registered",), {})

    def deprecate(self, ref: str, *, actor: str, reason: str) -> Adapter:
        """Retire an adapter for good (owner or admin), saying why; journals ``adapter.deprecated``."""
        reason = (reason or "").strip()
        if not reason or len(reason) > 500 or "\n" in reason:
            raise InvalidInput("reason: say in one line (at most 500 characters) why the adapter is deprecated",
                               field="reason")
        return self._move(ref, actor, "deprecated", ("registered", "published"), {"reason": reason})

    def _move(self, ref: str, actor: str, status: str, from_: tuple[str, ...], extra: dict[str, Any]) -> Adapter:
        adapter = self.get(ref)
        acting = self.accounts.get(actor)
        if acting.id != adapter.owner and not acting.is_admin:
            raise PermissionDenied(f"only the owner of {adapter.ref} (or an admin) may mark it {status}", field="actor")
        with self.store.write() as conn:
            done = conn.execute(
                update(adapters).where(adapters.c.id == adapter.id, adapters.c.status.in_(from_)).values(status=status)
            ).rowcount
            if not done:
                current = conn.execute(select(adapters.c.status).where(adapters.c.id == adapter.id)).scalar_one()
                raise Conflict(f"{adapter.ref} is {current}; it cannot become {status}", field="status")
            self.journal.append(conn, f"adapter.{status}",
                                {"id": adapter.id, "name": adapter.name, "version": adapter.version, **extra},
                                actor=acting.id)
        return self.get(adapter.id)


# --------------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------------


def _read_manifest(source: Path) -> tuple[bytes, Any]:
    """The bytes of ``royalty.json`` (what is hashed) and their parsed JSON."""
    if not source.is_dir():
        raise InvalidInput(f"{source}: no such adapter directory", field="adapter_dir")
    path = source / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{source} has no {MANIFEST}: write the artifact with write_artifact first",
                           field="adapter_dir") from None
    try:
        return raw, json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise InvalidInput(f"{path}: not UTF-8 JSON ({exc})", field="manifest") from None


def _copy_checked(source: Path, staging: Path, files: dict[str, str], manifest_raw: bytes) -> None:
    """Copy the listed files into ``staging``, hashing what is copied; every mismatch, missing, extra or linked
    file is reported in one InvalidInput. The manifest is written from the bytes that were checked."""
    problems: list[str] = []
    present = set(_artifact_files(source, problems))
    problems += [f"{name}: not listed in {MANIFEST} (only hashed files can be registered)"
                 for name in sorted(present - files.keys())]
    staging.mkdir()
    for name, digest in sorted(files.items()):
        if name not in present:
            problems.append(f"{name}: listed in {MANIFEST} but missing")
            continue
        out = staging / name
        out.parent.mkdir(parents=True, exist_ok=True)
        found = _copy_file(source / name, out)
        if found != digest:
            problems.append(f"{name}: SHA-256 {found[:16]}… differs from {digest[:16]}… in {MANIFEST}")
    if problems:
        raise InvalidInput(f"{source}: " + "; ".join(problems), field="adapter_dir")
    _write_atomic(staging / MANIFEST, manifest_raw)


def _artifact_files(root: Path, problems: list[str] | None = None) -> Iterator[str]:
    """Relative POSIX names of the regular files under ``root`` except the manifest, sorted. A symbolic link is
    never followed: it is reported in ``problems`` when given, else skipped."""
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            if problems is not None:
                problems.append(f"{name}: a symbolic link; copy the real file into the adapter directory")
        elif path.is_file() and name != MANIFEST:
            yield name


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _copy_file(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        for chunk in iter(lambda: fin.read(_CHUNK), b""):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks: the hash every manifest and lineage record uses."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # not empty: other versions live there


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(b"royalty.adapter:" + name.encode("utf-8")).digest()[:8], "big", signed=True)
