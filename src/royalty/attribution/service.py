"""``node.attribution``: build an adapter's attribution index, attribute answers to data with receipts, verify them.

Files under ``<home>/attribution/``::

    <adapter id>/index.json     the build record: parameters (method, dim, seed, threads; batch size and damping for
                                method final), the replay's comparison with the adapter (method inrun), projection
                                fingerprint, rows, both indexes' checksums, the groups file's hash, the
                                attribution.index_built event
    <adapter id>/grad/          AttributionIndex: one projected row per training example (+ preconditioner: final)
    <adapter id>/spans/         SpanIndex over the training text, one document per training example
    <adapter id>/groups.json    every row's grouping key (exact and near-duplicates grouped; its SHA-256 is in
                                index.json)
    receipts/<rcpt_…>.json      a receipt's canonical JSON bytes (their SHA-256 is journaled)
    receipts/<rcpt_…>.request.json   the prompt, the response and its token ids, to recompute the receipt

An index directory is built under a temporary name and renamed into place whole, so ``index.json`` present means the
index is complete. A build with the parameters of the existing index reuses it; other parameters are refused unless
``rebuild=True`` (scores from two projections are not comparable, so an index is never silently replaced).

Determinism. Gradient passes run with ``THREADS`` torch threads in eval mode, rows in training order in batches of
the recorded size; scores accumulate in float64 (see index.py); everything after the scores is integer or exact
rational arithmetic (receipts.py). So ``verify`` recomputes a receipt bit for bit on the same platform, and the
integer weights agree across platforms unless a fixed-point score lands on a rounding boundary.

The weights policy is in :mod:`royalty.attribution.receipts`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Conflict, InvalidInput, NotFound, VerificationFailed
from ..journal.canonical import canonical_json
from .index import DEFAULT_DAMPING, SCORE_THREADS, AttributionIndex, RowMeta
from .receipts import (
    NEAR_DUPLICATE_BP,
    SCORE_SCALE,
    SPAN_SCALE,
    AttributionReceipt,
    RowOwners,
    decimal,
    first_difference,
    fixed_scores,
    fixed_span_credit,
    grouped_influence,
    near_duplicate_keys,
    weights,
)
from .spans import DocMeta, SpanIndex, TraceParams

if TYPE_CHECKING:
    from ..factory.adapters import Adapter
    from ..factory.config import TrainConfig
    from ..factory.data import DataSplit, Example
    from ..node import Node
    from .inrun import IndexCapture, InRunInfluence
    from .projection import Projector

ROOT = "attribution"
BUILD_FILE = "index.json"
GROUPS_FILE = "groups.json"  # every row's grouping key (near_duplicate_keys), computed once at build time
BUILD_FORMAT = "royalty.attribution-build/1"
DEFAULT_DIM = 1024
METHODS = ("inrun", "final")  # see Attribution.build_index
# B1: in-run cosine is level with TracIn-CP on LDS; summed with "final" it gains 0.24-0.34 of fact-owner top-1 at
# about the same LDS and payout (docs/ATTRIBUTION.md, Measured): that mix is the candidate for the next default
DEFAULT_METHOD = "inrun"
DEFAULT_BATCH_SIZE = 8
DEFAULT_TOP = 10
DEFAULT_MAX_NEW_TOKENS = 64
THREADS = SCORE_THREADS  # torch threads for every gradient pass: fixed, so results do not depend on the machine
PROJECTION_KIND = "factorised"
_RECEIPT_ID = re.compile(r"rcpt_[0-9a-f]{24}")


@dataclass
class _Loaded:
    """An adapter ready to attribute: model (eval), tokenizer, template, projector and both indexes."""

    adapter: Adapter
    build: dict[str, Any]
    model: Any
    tokenizer: Any
    template: str
    projector: Any
    grad: AttributionIndex
    spans: SpanIndex
    owners: RowOwners  # who each row's credit goes to, duplicates grouped


@dataclass(frozen=True)
class _Request:
    prompt: str
    response: str
    prompt_ids: list[int]
    response_ids: list[int]
    generated: bool
    request_id: str | None


class Attribution:
    """Proof of Attribution on one node (``node.attribution``). Heavy libraries are imported when needed."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._cache: dict[str, _Loaded] = {}

    @property
    def root(self) -> Path:
        return self.node.home / ROOT

    def index_dir(self, adapter: Adapter) -> Path:
        return self.root / adapter.id

    # ------------------------------------------------------------------------------------------------------------
    # the index
    # ------------------------------------------------------------------------------------------------------------

    def build_index(self, adapter_ref: str, *, dim: int = DEFAULT_DIM, seed: int | None = None,
                    method: str = DEFAULT_METHOD, batch_size: int = DEFAULT_BATCH_SIZE,
                    damping: float = DEFAULT_DAMPING, rebuild: bool = False) -> dict[str, Any]:
        """Build (or reuse) the attribution index of adapter ``adapter_ref`` and return its build record, with
        ``reused`` saying which.

        The adapter's training examples are rebuilt from its manifest's config (and checked against the examples
        hash the manifest recorded). ``method`` says what a row is:

        - ``"inrun"`` (default): the training run is replayed with ``inrun.InRunInfluence`` attached, and a row is
          the example's Adam-scaled share of the updates it was in (receipts score with the plain cosine); the
          record's ``replay`` says whether the replay reproduced the adapter's weights exactly;
        - ``"final"``: a post-hoc pass at the adapter's weights, gradients in batches of ``batch_size``, with a
          damped Fisher preconditioner of ``damping`` (receipts score with the preconditioned cosine).

        Rows are projected with a seeded projection (``seed`` None: a random secret, recorded in the index); a span
        index over the training text is built beside them. Journals ``attribution.index_built``.

        Raises InvalidInput for bad parameters; Conflict when an index with other parameters exists (unless
        ``rebuild``) or the training data can no longer be rebuilt exactly; NotFound for an unknown adapter.
        """
        _check_positive_int(dim, "dim")
        _check_positive_int(batch_size, "batch_size")
        _check_seed(seed)
        if not (isinstance(damping, (int, float)) and not isinstance(damping, bool) and math.isfinite(damping)
                and damping > 0):
            raise InvalidInput(f"damping must be a positive number (got {damping!r})", field="damping")
        adapter = self.node.adapters.get(adapter_ref)
        if method not in METHODS:
            raise InvalidInput(f"method must be one of {', '.join(METHODS)} (got {method!r})", field="method")
        wanted = _params(method, dim)
        if method == "final":  # what only a post-hoc pass uses (a replay batches as the training did)
            wanted.update(batch_size=batch_size, damping=repr(float(damping)))
        existing = self._build_record(adapter)
        if existing is not None and not rebuild:
            recorded = existing["params"]
            differs = [f"{k}={recorded.get(k)!r} (asked {v!r})" for k, v in {**wanted, "seed": seed}.items()
                       if (k != "seed" or v is not None) and recorded.get(k) != v]
            if differs:
                raise Conflict(
                    f"the attribution index of {adapter.ref} was built with other parameters: {', '.join(differs)}; "
                    "scores of different builds are not comparable: ask for the same parameters, or rebuild it "
                    "(rebuild=True, --rebuild)", field="params")
            return {**existing, "reused": True}
        record = self._build(adapter, {**wanted, "seed": secrets.randbelow(2**63) if seed is None else seed},
                             replace=existing is not None)
        return {**record, "reused": False}

    def capture(self, *, dim: int = DEFAULT_DIM, seed: int | None = None) -> IndexCapture:
        """A training callback that records the in-run rows of the run it follows (what ``build_index`` with
        method "inrun" gets by replaying the run), for ``index_from_capture`` once the adapter is registered: the
        index of a run that cannot be replayed exactly (a GPU run, another platform) or should not be trained twice.
        ``seed`` None: a random secret, as for ``build_index``. Training is unchanged by it (byte-identical adapter;
        benchmarks/attribution/capture.py measures the time it adds)."""
        from .inrun import IndexCapture

        _check_positive_int(dim, "dim")
        _check_seed(seed)
        return IndexCapture(dim, secrets.randbelow(2**63) if seed is None else seed, PROJECTION_KIND)

    def index_from_capture(self, adapter_ref: str, capture: IndexCapture, *, rebuild: bool = False) -> dict[str, Any]:
        """Build the attribution index of ``adapter_ref`` from the rows ``capture`` recorded while it was trained,
        and return the build record (``replay``: ``{"captured": true}``). Refused (InvalidInput) unless the capture
        followed that adapter's whole run: the same training examples (the manifest's hash) and every step; Conflict
        when an index exists, unless ``rebuild``."""
        adapter = self.node.adapters.get(adapter_ref)
        if capture.data is None or capture.attached:
            raise InvalidInput("the capture has not followed a finished training run", field="capture")
        steps = int(adapter.manifest.get("metrics", {}).get("steps", -1))
        if capture.steps != steps:
            raise InvalidInput(f"the capture saw {capture.steps} steps and adapter {adapter.ref} was trained for "
                               f"{steps}: it followed another run", field="capture")
        existing = self._build_record(adapter)
        if existing is not None and not rebuild:
            raise Conflict(f"adapter {adapter.ref} already has an attribution index; rebuild it (rebuild=True, "
                           "--rebuild) to replace it", field="adapter")
        params = {**_params("inrun", capture.dim), "seed": capture.seed}
        return {**self._build(adapter, params, replace=existing is not None, capture=capture), "reused": False}

    def info(self, adapter_ref: str) -> dict[str, Any]:
        """The build record of ``adapter_ref``'s index with both indexes' current state (rows, checksums, sizes);
        the projection seed is left out (it is the index's secret). NotFound when none was built."""
        adapter = self.node.adapters.get(adapter_ref)
        record = self._build_record(adapter)
        if record is None:
            raise NotFound(f"adapter {adapter.ref} has no attribution index; build it: royalty attribution index "
                           f"build {adapter.ref}", field="adapter")
        grad = AttributionIndex.open(self.index_dir(adapter) / "grad")
        spans = SpanIndex.open(self.index_dir(adapter) / "spans")
        pre = grad.manifest["preconditioner"] or {}
        params = {k: v for k, v in record["params"].items() if k != "seed"}
        return {
            **{k: v for k, v in record.items() if k != "params"}, "params": params,
            "path": str(self.index_dir(adapter)),
            "grad": {"rows": grad.rows, "dim": grad.dim, "step": grad.step, "checksum": grad.checksum,
                     "preconditioner": {"damping": pre.get("damping"), "lambda": pre.get("lambda"),
                                        "mean": pre.get("mean")}},
            "spans": {"documents": spans.documents, "units": spans.units, "bytes": spans.nbytes,
                      "checksum": spans.manifest["checksum"]},
        }

    def _build_record(self, adapter: Adapter) -> dict[str, Any] | None:
        path = self.index_dir(adapter) / BUILD_FILE
        try:
            record = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise VerificationFailed(f"{path} is damaged ({exc}); rebuild the index (--rebuild)",
                                     field=BUILD_FILE) from None
        if not isinstance(record, dict) or record.get("format") != BUILD_FORMAT:
            raise VerificationFailed(f"{path} is not a {BUILD_FORMAT} record; rebuild the index (--rebuild)",
                                     field=BUILD_FILE)
        return record

    def _build(self, adapter: Adapter, params: dict[str, Any], *, replace: bool,
               capture: IndexCapture | None = None) -> dict[str, Any]:
        from ..factory.basemodel import load_tokenizer
        from ..factory.data import build_data

        cfg = _config(adapter)
        data = build_data(self.node, cfg, load_tokenizer(cfg.model.base)) if capture is None else capture.data
        assert data is not None
        _check_examples(adapter, data)
        texts = self._texts(data)
        step = int(adapter.manifest.get("metrics", {}).get("steps", 0))
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".build-{adapter.id}-{secrets.token_hex(4)}"
        final = self.index_dir(adapter)
        try:
            if capture is not None:
                assert capture.projector is not None
                projector, replay = capture.projector, {"captured": True}
                grad = _inrun_index(tmp, projector, adapter, step, capture)
            else:
                build = self._inrun_rows if params["method"] == "inrun" else self._final_rows
                projector, grad, replay = build(adapter, cfg, data, params, tmp, step)
            spans = SpanIndex.build(
                ((DocMeta(e.contribution_id, e.contributor, e.datanet_id, e.datanet, e.version, e.position),
                  texts[(e.datanet_id, e.version, e.position)]) for e in data.train), tmp / "spans")
            # Grouping near-duplicates is a MinHash pass over every row (~40 µs each, 40 s at 1M rows): done once
            # here, not on every load.
            keys = near_duplicate_keys([texts[(e.datanet_id, e.version, e.position)] for e in data.train],
                                       [e.contribution_id for e in data.train])
            groups = canonical_json({"threshold_bp": NEAR_DUPLICATE_BP, "keys": keys})
            (tmp / GROUPS_FILE).write_bytes(groups)
            record = {
                "format": BUILD_FORMAT,
                "adapter": {"id": adapter.id, "ref": adapter.ref, "manifest_sha256": adapter.manifest_sha256},
                "params": params,
                "projection_fingerprint": projector.fingerprint(),
                "dim": projector.dim,
                "rows": grad.rows,
                "step": step,
                "grad_checksum": grad.checksum,
                "spans_checksum": spans.manifest["checksum"],
                "groups_sha256": hashlib.sha256(groups).hexdigest(),
                "built_ms": self.node.clock(),
                **({"replay": replay} if replay is not None else {}),
            }
            (tmp / BUILD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", "utf-8")
            event = self._publish(tmp, final, replace, record)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._cache.pop(adapter.id, None)
        return {**record, "event_seq": event}

    def _final_rows(self, adapter: Adapter, cfg: TrainConfig, data: DataSplit, params: dict[str, Any], tmp: Path,
                    step: int) -> tuple[Projector, AttributionIndex, None]:
        """Method "final": every training example's gradient at the adapter's weights (a post-hoc pass), with a
        damped Fisher preconditioner."""
        from ..factory.callbacks import pad_id
        from .capture import LoraGradientCapture
        from .projection import Projector

        model, tokenizer = _load_model(adapter, cfg)
        with _torch_threads(THREADS), LoraGradientCapture(model) as capture:
            projector = Projector(capture.layout, params["dim"], params["seed"], PROJECTION_KIND)
            grad = _create_index(tmp, projector, adapter, step)

            def sink(examples: list[Example], rows: np.ndarray) -> None:
                grad.append(projector.project_rows(rows).numpy(), [
                    RowMeta(e.contribution_id, e.contributor, e.datanet_id, e.version, e.position, e.index, step,
                            float(np.sqrt(np.dot(r.astype(np.float64), r.astype(np.float64)))))
                    for e, r in zip(examples, rows)])

            capture.gradients(data.train, pad_id(tokenizer), batch_size=params["batch_size"], sink=sink)
            grad.flush()
            grad.build_preconditioner(float(params["damping"]))
        return projector, grad, None

    def _inrun_rows(self, adapter: Adapter, cfg: TrainConfig, data: DataSplit, params: dict[str, Any], tmp: Path,
                    step: int) -> tuple[Projector, AttributionIndex, dict[str, Any]]:
        """Method "inrun": replay the adapter's training run (its config, data, seed, parent and thread count) with
        ``inrun.InRunInfluence`` attached, so every row is the example's Adam-scaled share of the updates it was
        in. The replay's weights are compared with the registered adapter's: on the platform and thread count it
        was trained with they are identical bit for bit (the factory's loop is deterministic); the record keeps
        whether they were and the largest difference. (``setup`` rebuilds ``data`` itself, the same examples.)"""
        from ..factory.train import fit, setup
        from .capture import LoraGradientCapture
        from .inrun import InRunInfluence
        from .projection import Projector

        threads = adapter.manifest.get("metrics", {}).get("threads")
        replay_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})}) \
            if isinstance(threads, int) and threads >= 1 else cfg
        parent = (adapter.manifest.get("lineage") or {}).get("parent")
        init = self.node.adapters.get(parent).path if parent else None
        run = setup(self.node, replay_cfg, out_dir=tmp / "replay", init_adapter=init)
        with LoraGradientCapture(run.model) as capture:
            projector = Projector(capture.layout, params["dim"], params["seed"], PROJECTION_KIND)
        inrun = InRunInfluence(projector)
        run.callbacks.append(inrun)
        result = fit(run)
        replay = _compare_weights(result.adapter_dir, adapter.path)
        shutil.rmtree(tmp / "replay", ignore_errors=True)
        return projector, _inrun_index(tmp, projector, adapter, step, inrun), replay

    def _publish(self, tmp: Path, final: Path, replace: bool, record: dict[str, Any]) -> int:
        """Rename the built index into place and journal it; on any failure the previous index is back."""
        old = final.with_name(f".old-{final.name}-{secrets.token_hex(4)}") if replace else None
        if old is not None:
            os.rename(final, old)
        elif final.exists():
            raise Conflict(f"{final} was built by another process meanwhile; call build_index again to reuse it",
                           field="adapter")
        try:
            os.rename(tmp, final)
            with self.node.store.write() as conn:
                event = self.node.journal.append(conn, "attribution.index_built", {
                    "adapter_id": record["adapter"]["id"], "adapter": record["adapter"]["ref"],
                    "manifest_sha256": record["adapter"]["manifest_sha256"],
                    "grad_checksum": record["grad_checksum"], "spans_checksum": record["spans_checksum"],
                    "projection_fingerprint": record["projection_fingerprint"], "dim": record["dim"],
                    "rows": record["rows"], "method": record["params"]["method"],
                    "damping": record["params"].get("damping"), "batch_size": record["params"].get("batch_size"),
                    "rebuilt": replace,
                })
        except BaseException:
            if final.exists() and not tmp.exists():
                os.rename(final, tmp)  # the caller removes tmp
            if old is not None:
                os.rename(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _write_atomic(final / BUILD_FILE, (json.dumps({**record, "event_seq": event.seq}, indent=1, sort_keys=True)
                                           + "\n").encode())
        return event.seq

    def _texts(self, data: DataSplit) -> dict[tuple[str, int, int], str]:
        """(datanet id, version, position) → the record's text, for every source row still holding content."""
        from ..datanet.records import RECORD_FIELDS, record_text

        out: dict[tuple[str, int, int], str] = {}
        for source in data.sources:
            kind = self.node.datanets.get(source["datanet_id"]).kind
            for row in self.node.datanets.rows(source["slug"], version=source["version"]):
                if row["purged"]:
                    continue
                fields = {k: row[k] for k in RECORD_FIELDS[kind] if row.get(k) is not None}
                out[(source["datanet_id"], source["version"], row["position"])] = record_text(kind, fields)
        return out

    def _load(self, adapter_ref: str) -> _Loaded:
        """The adapter ready to attribute (cached while its index stays the same)."""
        from .projection import Projector

        adapter = self.node.adapters.get(adapter_ref)
        record = self._build_record(adapter)
        if record is None:
            raise NotFound(f"adapter {adapter.ref} has no attribution index; build it first: royalty attribution "
                           f"index build {adapter.ref}", field="adapter")
        cached = self._cache.get(adapter.id)
        if cached is not None and cached.build == record:
            return cached
        grad = AttributionIndex.open(self.index_dir(adapter) / "grad")
        spans = SpanIndex.open(self.index_dir(adapter) / "spans")
        if grad.checksum != record["grad_checksum"] or spans.manifest["checksum"] != record["spans_checksum"]:
            raise VerificationFailed(f"the attribution index of {adapter.ref} does not match its build record "
                                     f"{self.index_dir(adapter) / BUILD_FILE}; rebuild it (--rebuild)",
                                     field=BUILD_FILE)
        projector = Projector.from_description(grad.projection)
        cfg = _config(adapter)
        model, tokenizer = _load_model(adapter, cfg)
        # one span-index document per row, in the same (training) order: the texts near-duplicates are found in
        cids = list(grad.column("contribution_id"))
        if spans.documents != len(cids):
            raise VerificationFailed(f"the attribution index of {adapter.ref} has {len(cids)} rows and {spans.documents} "
                                     "span documents; rebuild it (--rebuild)", field=BUILD_FILE)
        keys = self._group_keys(adapter, record, spans, cids)
        owners = RowOwners.of(keys, grad.column("contributor"), grad.column("datanet_id"))  # type: ignore[arg-type]
        loaded = _Loaded(adapter, record, model, tokenizer, cfg.data.template, projector, grad, spans, owners)
        self._cache[adapter.id] = loaded
        return loaded

    def _group_keys(self, adapter: Adapter, record: dict[str, Any], spans: SpanIndex, cids: list[str]) -> list[str]:
        """Every row's grouping key: from the build's groups file (checked against the record's hash), or computed
        from the span documents for an index built before groups were stored or with another threshold."""
        if "groups_sha256" in record:
            path = self.index_dir(adapter) / GROUPS_FILE
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != record["groups_sha256"]:
                raise VerificationFailed(f"{path} does not match its build record; rebuild the index (--rebuild)",
                                         field=GROUPS_FILE)
            groups = json.loads(data)
            if groups["threshold_bp"] == NEAR_DUPLICATE_BP and len(groups["keys"]) == len(cids):
                return list(groups["keys"])
        return near_duplicate_keys([spans.document_text(d) for d in range(spans.documents)], cids)

    # ------------------------------------------------------------------------------------------------------------
    # receipts
    # ------------------------------------------------------------------------------------------------------------

    def attribute(self, adapter_ref: str, *, prompt: str, response: str | None = None, request_id: str | None = None,
                  top: int = DEFAULT_TOP, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> AttributionReceipt:
        """Attribute ``response`` to ``prompt`` (None: the adapter answers first, greedily, up to
        ``max_new_tokens``) to the adapter's training data; store and journal the receipt and return it.

        Raises NotFound when the adapter or its index does not exist, InvalidInput for an empty prompt or response
        or bad ``top``/``max_new_tokens``.
        """
        from ..factory.data import encode_chat

        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput("the prompt is empty: attribution needs the question that was asked", field="prompt")
        if response is not None and (not isinstance(response, str) or not response.strip()):
            raise InvalidInput("the response is empty: give the answer to attribute, or let the adapter generate one",
                               field="response")
        _check_positive_int(top, "top")
        _check_positive_int(max_new_tokens, "max_new_tokens")
        if request_id is not None and (not isinstance(request_id, str) or not request_id or len(request_id) > 128):
            raise InvalidInput("request_id must be 1-128 characters", field="request_id")
        loaded = self._load(adapter_ref)
        prompt_ids = encode_chat(loaded.tokenizer, loaded.template, [{"role": "user", "content": prompt}])
        if response is None:
            response_ids, response = _generate(loaded, prompt_ids, max_new_tokens)
            generated = True
        else:
            response_ids = _response_ids(loaded, prompt, prompt_ids, response)
            generated = False
        request = _Request(prompt, response, prompt_ids, response_ids, generated, request_id)
        receipt = self._compute(loaded, request, top=top, influence_bps=self._influence_bps(),
                                trace=TraceParams(), created_ms=self.node.clock())
        self._store(receipt, request)
        return receipt

    def show(self, receipt_id: str) -> dict[str, Any]:
        """A stored receipt with its request (prompt, response) and journal event: ``{"receipt", "request",
        "sha256", "event_seq"}``. NotFound for an unknown id."""
        raw, receipt_dict = self._read_receipt(receipt_id)
        receipt = AttributionReceipt.parse(receipt_dict, where=f"receipt {receipt_id}")
        event = self._event(receipt_id)
        return {"receipt": receipt.to_dict(), "request": self._read_request(receipt_id),
                "sha256": hashlib.sha256(raw).hexdigest(), "event_seq": None if event is None else event.seq}

    def verify(self, receipt: str | dict[str, Any]) -> dict[str, Any]:
        """Recompute a receipt (an id, or a receipt's JSON object) from the index and the stored request and compare
        it with the receipt, field by field (its time fields taken from the receipt), then check it against the
        hash its ``attribution.receipt`` journal event holds. Returns ``{"ok": True, "receipt_id", "sha256",
        "event_seq"}``; raises VerificationFailed naming the first field that differs (``field``)."""
        if isinstance(receipt, str):
            _, receipt_dict = self._read_receipt(receipt)
        elif isinstance(receipt, dict):
            receipt_dict = receipt
        else:
            raise InvalidInput("give a receipt id (rcpt_…) or a receipt's JSON object", field="receipt")
        stored = AttributionReceipt.parse(receipt_dict)
        req = self._read_request(stored.receipt_id)
        loaded = self._load(stored.adapter.id)
        request = self._request_for(loaded, stored, req)
        m = stored.method
        try:
            trace = TraceParams(**{**m.spans.params, "keep_fraction": float(m.spans.params["keep_fraction"])})
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationFailed(f"receipt {stored.receipt_id}: method.spans.params is damaged ({exc})",
                                     field="method.spans.params") from None
        again = self._compute(loaded, request, top=m.top, influence_bps=m.influence_bps, trace=trace,
                              created_ms=stored.created_ms)
        where = first_difference(again.to_dict(), receipt_dict)
        if where is not None:
            raise VerificationFailed(
                f"receipt {stored.receipt_id}: {where} differs from the recomputation from the index "
                f"(receipt {_lookup(receipt_dict, where)!r}, recomputed {_lookup(again.to_dict(), where)!r})",
                field=where)
        event = self._event(stored.receipt_id)
        if event is None:
            raise VerificationFailed(f"receipt {stored.receipt_id} is not in the journal (no attribution.receipt "
                                     "event names it)", field="receipt_id")
        if event.data.get("sha256") != again.sha256:
            raise VerificationFailed(f"receipt {stored.receipt_id} does not match the hash journaled in event "
                                     f"{event.seq}", field="receipt", seq=event.seq)
        return {"ok": True, "receipt_id": stored.receipt_id, "sha256": again.sha256, "event_seq": event.seq}

    def _influence_bps(self) -> int:
        return self.node.params.current().attribution_influence_bps

    def _compute(self, loaded: _Loaded, request: _Request, *, top: int, influence_bps: int, trace: TraceParams,
                 created_ms: int) -> AttributionReceipt:
        """The receipt of one request: the same inputs give the same receipt, bit for bit."""
        from .capture import query_gradient

        adapter, grad = loaded.adapter, loaded.grad
        with _torch_threads(THREADS):
            query = query_gradient(loaded.model, request.prompt_ids, request.response_ids,
                                   projector=loaded.projector)  # [dim] float32
        inrun = _is_inrun(loaded)
        scores = _influence_scores(loaded, query)  # [rows] float64, cosines
        fixed = fixed_scores(scores)
        influence, influence_dn = grouped_influence(fixed, loaded.owners)
        spans = loaded.spans.trace(request.response, trace)
        span_c = fixed_span_credit(spans, by="contributor")
        span_d = fixed_span_credit(spans, by="datanet_id")
        pre = grad.manifest["preconditioner"]
        hits = grad.top(scores, top) if grad.rows else []
        return AttributionReceipt.seal(
            created_ms=created_ms,
            request={
                "request_id": request.request_id, "prompt_sha256": _sha256(request.prompt.encode("utf-8")),
                "response_sha256": _sha256(request.response.encode("utf-8")),
                "response_ids_sha256": _sha256(canonical_json(request.response_ids)),
                "prompt_tokens": len(request.prompt_ids), "response_tokens": len(request.response_ids),
                "generated": request.generated,
            },
            adapter={"id": adapter.id, "name": adapter.name, "version": adapter.version, "owner": adapter.owner,
                     "manifest_sha256": adapter.manifest_sha256},
            datanets=[{"slug": d["slug"], "id": d["datanet_id"], "version": d["version"], "root": d["root"]}
                      for d in adapter.manifest.get("datanets", [])],
            method={
                "influence": {
                    "method": "inrun-adam-cosine" if inrun else "preconditioned-cosine",
                    "projection_fingerprint": loaded.build["projection_fingerprint"],
                    "dim": grad.dim, "damping": None if inrun else repr(float(pre["damping"])),
                    "normalisation": "unit norm, query and rows" if inrun else
                    "unit norm under the damped Fisher metric, query and rows",
                    "index_checksum": grad.checksum, "rows": grad.rows, "step": grad.step, "threads": THREADS,
                    "score_scale": SCORE_SCALE,
                },
                "spans": {"params": {**asdict(trace), "keep_fraction": repr(trace.keep_fraction)},
                          "index_checksum": loaded.spans.manifest["checksum"], "documents": loaded.spans.documents,
                          "span_scale": SPAN_SCALE},
                "influence_bps": influence_bps, "grouping": f"near_duplicates_bp={NEAR_DUPLICATE_BP}", "top": top,
            },
            weights={"contributors": weights(influence, span_c, influence_bps),
                     "datanets": weights(influence_dn, span_d, influence_bps)},
            scores={"influence": influence, "influence_datanets": influence_dn, "spans": span_c,
                    "spans_datanets": span_d},
            top=[{"row": h.row, "contribution_id": h.meta.contribution_id, "contributor": h.meta.contributor,
                  "datanet_id": h.meta.datanet_id, "version": h.meta.version, "position": h.meta.position,
                  "score": decimal(int(fixed[h.row]), SCORE_SCALE)} for h in hits],
            spans=[{"start": s.start, "end": s.end, "text": s.text or "", "count": s.count,
                    "surprise": decimal(round(s.surprise * SPAN_SCALE), SPAN_SCALE),
                    "contributions": _span_contributions(s)} for s in spans],
        )

    def _request_for(self, loaded: _Loaded, stored: AttributionReceipt, req: dict[str, Any]) -> _Request:
        """The request to recompute ``stored`` from: the stored prompt and response; the response's ids re-encoded
        from its text, or (a generated response) the stored ids, which must decode to the stored text."""
        from ..factory.data import encode_chat

        try:
            prompt, response, stored_ids = str(req["prompt"]), str(req["response"]), list(req["response_ids"])
        except (KeyError, TypeError) as exc:
            raise VerificationFailed(f"the stored request of {stored.receipt_id} is damaged ({exc})",
                                     field="request") from None
        prompt_ids = encode_chat(loaded.tokenizer, loaded.template, [{"role": "user", "content": prompt}])
        if stored.request.generated:
            if not all(isinstance(i, int) for i in stored_ids) or _decode(loaded, stored_ids) != response:
                raise VerificationFailed(f"the stored response ids of {stored.receipt_id} do not decode to the stored "
                                         "response", field="request.response_ids_sha256")
            response_ids = stored_ids
        else:
            response_ids = _response_ids(loaded, prompt, prompt_ids, response)
        return _Request(prompt, response, prompt_ids, response_ids, stored.request.generated,
                        stored.request.request_id)

    # --- storage ------------------------------------------------------------------------------------------------

    def _receipts(self) -> Path:
        return self.root / "receipts"

    def _store(self, receipt: AttributionReceipt, request: _Request) -> None:
        """Write the receipt and its request, then journal the receipt; nothing stays behind if that fails."""
        folder = self._receipts()
        folder.mkdir(parents=True, exist_ok=True)
        body = receipt.canonical()
        paths = (folder / f"{receipt.receipt_id}.json", folder / f"{receipt.receipt_id}.request.json")
        _write_atomic(paths[1], canonical_json({"prompt": request.prompt, "response": request.response,
                                                "response_ids": request.response_ids}))
        _write_atomic(paths[0], body)
        try:
            with self.node.store.write() as conn:
                self.node.journal.append(conn, "attribution.receipt", {
                    "receipt_id": receipt.receipt_id, "sha256": hashlib.sha256(body).hexdigest(),
                    "adapter_id": receipt.adapter.id, "request_id": receipt.request.request_id,
                })
        except BaseException:
            for path in paths:
                path.unlink(missing_ok=True)
            raise

    def _read_receipt(self, receipt_id: str) -> tuple[bytes, dict[str, Any]]:
        _check_receipt_id(receipt_id)
        path = self._receipts() / f"{receipt_id}.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no receipt {receipt_id} on this node", field="receipt_id") from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise VerificationFailed(f"{path} is not JSON any more ({exc})", field="receipt") from None
        if not isinstance(data, dict):
            raise VerificationFailed(f"{path} is not a receipt (not a JSON object)", field="receipt")
        return raw, data

    def _read_request(self, receipt_id: str) -> dict[str, Any]:
        _check_receipt_id(receipt_id)
        path = self._receipts() / f"{receipt_id}.request.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFound(f"the request of receipt {receipt_id} is not stored on this node: it cannot be "
                           "recomputed here", field="receipt_id") from None
        except ValueError as exc:
            raise VerificationFailed(f"{path} is damaged ({exc})", field="request") from None
        if not isinstance(data, dict):
            raise VerificationFailed(f"{path} is damaged (not a JSON object)", field="request")
        return data

    def _event(self, receipt_id: str) -> Any:
        """The attribution.receipt event of ``receipt_id`` (the newest if several), or None."""
        found, after = None, -1
        while True:
            batch = self.node.journal.events(after=after, limit=1000, type="attribution.receipt")
            for event in batch:
                if event.data.get("receipt_id") == receipt_id:
                    found = event
            if len(batch) < 1000:
                return found
            after = batch[-1].seq


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _config(adapter: Adapter) -> TrainConfig:
    from ..factory.config import load_config

    config = adapter.manifest.get("config")
    if not isinstance(config, dict):
        raise Conflict(f"adapter {adapter.ref} has no training config in its manifest; it cannot be attributed",
                       field="adapter")
    return load_config(config)


def _load_model(adapter: Adapter, cfg: TrainConfig) -> tuple[Any, Any]:
    """The base model with the adapter on top, in eval mode; Conflict when the base's weights are not the ones the
    adapter was trained on."""
    from peft import PeftModel

    from ..factory.basemodel import identity, load_base

    base_ref = cfg.model.base
    weights_sha = identity(base_ref).weights_sha256
    if weights_sha != adapter.base_weights_sha256:
        raise Conflict(f"the base model {base_ref} has changed since {adapter.ref} was trained (weights "
                       f"{weights_sha[:12]}, trained on {adapter.base_weights_sha256[:12]}); restore it",
                       field="model.base")
    base, tokenizer = load_base(base_ref, dtype=cfg.model.dtype)
    model = PeftModel.from_pretrained(base, str(adapter.path))
    model.eval()
    return model, tokenizer


def _is_inrun(loaded: _Loaded) -> bool:
    return loaded.build["params"].get("method", "final") == "inrun"


def _influence_scores(loaded: _Loaded, query: np.ndarray) -> np.ndarray:
    """[rows] float64 cosines of a projected query gradient with every row: plain for an in-run index, in the
    damped Fisher metric for a final-weights one."""
    return loaded.grad.score(query, precondition=not _is_inrun(loaded), normalize=True)


def _params(method: str, dim: int) -> dict[str, Any]:
    """The build parameters recorded for an index of ``method`` (without the seed)."""
    return {"method": method, "dim": dim, "kind": PROJECTION_KIND, "threads": THREADS}


def _inrun_index(tmp: Path, projector: Projector, adapter: Adapter, step: int,
                 inrun: InRunInfluence) -> AttributionIndex:
    """The grad index of an in-run accumulator's rows (a replay's or a capture's)."""
    grad = _create_index(tmp, projector, adapter, step)
    with _torch_threads(THREADS):
        for at in range(0, len(inrun.examples), 4096):
            chunk, examples = inrun.rows[at : at + 4096], inrun.examples[at : at + 4096]
            grad.append(chunk.astype(np.float32), [
                RowMeta(e.contribution_id, e.contributor, e.datanet_id, e.version, e.position, e.index, step,
                        float(np.linalg.norm(r))) for e, r in zip(examples, chunk)])
        grad.flush()
    return grad


def _create_index(tmp: Path, projector: Projector, adapter: Adapter, step: int) -> AttributionIndex:
    return AttributionIndex.create(tmp / "grad", dim=projector.dim, step=step, projection=projector.describe(),
                                   info={"adapter_id": adapter.id, "manifest_sha256": adapter.manifest_sha256})


def _compare_weights(replayed_dir: Path, adapter_dir: Path) -> dict[str, Any]:
    """How the replayed adapter's LoRA weights compare with the registered ones: identical bytes, or the largest
    absolute difference."""
    from safetensors.numpy import load_file

    from ..factory.adapters import file_sha256

    name = "adapter_model.safetensors"
    if file_sha256(replayed_dir / name) == file_sha256(adapter_dir / name):
        return {"identical": True, "max_abs_diff": 0.0}
    mine, theirs = load_file(str(replayed_dir / name)), load_file(str(adapter_dir / name))
    if set(mine) != set(theirs):
        raise Conflict(f"replaying the training of {adapter_dir} gave an adapter with other tensors; its index cannot "
                       "be built by replay (use method \"final\")", field="method")
    diff = max(float(np.abs(mine[k].astype(np.float64) - theirs[k].astype(np.float64)).max()) for k in mine)
    return {"identical": False, "max_abs_diff": diff}


def _check_examples(adapter: Adapter, data: DataSplit) -> None:
    """The rebuilt examples must be the ones the adapter was trained on: the same examples.jsonl bytes as the run
    wrote (``factory.train``), whose hash the manifest's lineage holds."""
    from ..factory.train import examples_jsonl

    expected = adapter.manifest.get("lineage", {}).get("examples_sha256")
    if _sha256(examples_jsonl(data).encode("utf-8")) != expected:
        raise Conflict(f"the training examples of {adapter.ref} cannot be rebuilt exactly (a contribution was purged, "
                       "or the tokenizer or data changed since training); its index cannot be built", field="adapter")


def _generate(loaded: _Loaded, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
    """Greedy answer of the adapter: its token ids (through EOS when it stopped) and its text."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and len(prompt_ids) + max_new_tokens > limit:
        if len(prompt_ids) >= limit:
            raise InvalidInput(f"the prompt has {len(prompt_ids)} tokens; the model reads at most {limit}",
                               field="prompt")
        max_new_tokens = limit - len(prompt_ids)
    eos = tokenizer.eos_token_id
    with torch.no_grad(), _torch_threads(THREADS):
        out = model.generate(input_ids=torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                             dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=_pad(tokenizer))
    ids = [int(t) for t in out[0, len(prompt_ids):].tolist()]
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
    if not ids:
        raise InvalidInput("the adapter generated nothing for this prompt; give a response to attribute",
                           field="response")
    return ids, _decode(loaded, ids)


def _decode(loaded: _Loaded, ids: Sequence[int]) -> str:
    return loaded.tokenizer.decode(list(ids), skip_special_tokens=True)


def _response_ids(loaded: _Loaded, prompt: str, prompt_ids: list[int], response: str) -> list[int]:
    """The response's tokens as training encodes an answer: the conversation with the answer, minus the prompt,
    through the first EOS; when the tokenizer merges across the boundary, the response alone plus EOS."""
    from ..factory.data import encode_chat

    tokenizer = loaded.tokenizer
    full = encode_chat(tokenizer, loaded.template, [{"role": "user", "content": prompt},
                                                     {"role": "assistant", "content": response}],
                       add_generation_prompt=False)
    eos = tokenizer.eos_token_id
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        rest = full[len(prompt_ids):]
        return rest[: rest.index(eos) + 1] if eos in rest else rest
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    return ids + ([eos] if eos is not None else [])


def _pad(tokenizer: Any) -> int:
    from ..factory.callbacks import pad_id

    return pad_id(tokenizer)


def _span_contributions(span: Any) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for d in span.documents:
        seen.setdefault(d.meta.contribution_id, {"contribution_id": d.meta.contribution_id,
                                                 "contributor": d.meta.contributor,
                                                 "datanet_id": d.meta.datanet_id})
    return list(seen.values())


def _lookup(data: Any, path: str) -> Any:
    """The value at a ``first_difference`` path, or None when it is missing."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        try:
            data = data[int(part[1:-1])] if part.startswith("[") else data[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_seed(seed: Any) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidInput(f"seed must be an integer in [0, 2^63) (got {seed!r})", field="seed")


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{name} must be a positive integer (got {value!r})", field=name)


def _check_receipt_id(receipt_id: Any) -> None:
    if not isinstance(receipt_id, str) or not _RECEIPT_ID.fullmatch(receipt_id):
        raise InvalidInput(f"{receipt_id!r} is not a receipt id (rcpt_ and 24 hex digits)", field="receipt_id")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if before != threads:
            torch.set_num_threads(before)
