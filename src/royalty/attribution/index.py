"""AttributionIndex: projected per-example gradients of one adapter checkpoint, stored so that scoring a query
against every training example is one pass over a memory-mapped file, and so that anyone can check the files.

Layout of an index directory (one per adapter and checkpoint step)::

    manifest.json              format, dim, step, projection parameters, shard list, every file's size and SHA-256,
                               and ``checksum``: SHA-256 of the canonical JSON of everything else
    shard-00000.f16            rows: little-endian float16, C order, [rows, dim]
    shard-00000.json           row metadata, one column per field (contribution, contributor, datanet, version, …)
    gram-<rows>.f64            Σ φ φᵀ over every stored row, float64 [dim, dim] (for the preconditioner)
    precond-<rows>.f64         Cholesky factor L of F + λI, float64 [dim, dim]   (only after build_preconditioner)
    precond-norms-<rows>.f64   ‖φ_i‖ in the preconditioned metric, float64 [rows]

Rows are stored scaled: row i holds ``φ_i / 2**e_i`` in float16 with the power of two ``e_i`` (in the metadata)
chosen so the largest entry lies in [2^14, 2^15). A per-row power of two costs nothing to undo exactly, and keeps
float16 from flushing small gradients to zero (LoRA gradients are often ~1e-5, below float16's normal range). The
value an index stands for is the *decoded* row ``float64(stored) * 2**e_i``; everything (scores, norms, the Fisher)
is computed from it, so results are reproducible from the files alone.

Append-only: rows are buffered and written as new shards (a full shard at a time, the rest on ``flush``); shard
files never change once written. Every write goes to a temporary file that is fsynced and renamed; the manifest is
renamed last, so it is the commit point and a crash leaves the previous index intact (stray files not named in the
manifest are ignored and overwritten later). One writer at a time (an flock on ``.lock`` during each commit).

Scores (``score``): the decoded row dotted with the query, accumulated in float64: a float16 value times a float32
query value is exact in float64, and a 1,024-term float64 sum is off by at most ~1e-13 of Σ|terms| in any order, so
scores agree across platforms far inside 1e-6, and on one platform they are bit-identical run to run (fixed blocks,
each row computed by one single-threaded call).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np

from ..errors import Conflict, InvalidInput, NotFound, StorageError, VerificationFailed

if TYPE_CHECKING:
    import torch

FORMAT = "royalty.attribution-index/1"
MANIFEST = "manifest.json"
DEFAULT_SHARD_ROWS = 65_536
# λ = c × mean eigenvalue of F, the mean taken over all dim eigenvalues (= trace(F) / dim). c = 1 gave the best
# damped empirical-Fisher LDS on the B0 digits benchmark (reference §4: 0.939 at c = 1 vs 0.706 at 0.1, 0.857 at 10).
DEFAULT_DAMPING = 1.0
# Rows per matmul: a 256 x 1,024 float64 block (2 MB) stays in L2. Fixed, so a row is always scored by the same call
# shape.
SCORE_CHUNK = 256
SCORE_THREADS = 2  # torch threads while scoring and building: fixed so results do not depend on the machine's cores
_TOP_EXPONENT = 15  # stored |value| < 2^15 (float16's largest finite value is 65,504)
_MANIFEST_KEYS = frozenset({"format", "dim", "dtype", "step", "projection", "info", "shard_rows", "rows", "shards",
                            "gram", "preconditioner", "files", "checksum"})
_STRING_COLUMNS = ("contribution_id", "contributor", "datanet_id")
_INT_COLUMNS = ("version", "position", "example_index", "step", "exponent")
_FLOAT_COLUMNS = ("grad_norm", "row_norm")


@dataclass(frozen=True)
class RowMeta:
    """Where one row came from. ``grad_norm`` is the norm of the exact (unprojected) per-example gradient."""

    contribution_id: str
    contributor: str  # account id
    datanet_id: str
    version: int
    position: int  # leaf position in the datanet version
    example_index: int  # position in the training run's example list
    step: int  # checkpoint (optimizer step) the gradient was taken at
    grad_norm: float


@dataclass(frozen=True)
class Hit:
    """One row of a top-k answer: its global row number, its score and where it came from."""

    row: int
    score: float
    meta: RowMeta


@dataclass(frozen=True)
class Preconditioner:
    """F = ΦᵀΦ / n over the decoded rows; H = F + λI with λ = damping × trace(F) / dim; ``factor`` is
    Cholesky(H) (lower), ``row_norms[i]`` = sqrt(φ_iᵀ H⁻¹ φ_i)."""

    damping: float
    lam: float
    mean_eigenvalue: float  # trace(F) / dim: the mean over all dim eigenvalues, zeros included (rank(F) <= rows)
    rows: int
    factor: np.ndarray  # [dim, dim] float64
    row_norms: np.ndarray  # [rows] float64


class AttributionIndex:
    """A directory of projected gradients. Make one with :meth:`create`, reopen it with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self._manifest = manifest
        self._pending: list[tuple[np.ndarray, list[RowMeta]]] = []  # (rows float64 [n, dim], meta), not yet written
        self._pending_rows = 0
        self._maps: list[np.ndarray] | None = None
        self._columns: dict[str, Any] | None = None
        self._codes: dict[str, tuple[np.ndarray, list[str]]] = {}
        self._precond: Preconditioner | None = None

    # ------------------------------------------------------------------------------------------------------------
    # creating and opening
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, *, dim: int, step: int, projection: dict[str, Any],
               info: dict[str, Any] | None = None, shard_rows: int = DEFAULT_SHARD_ROWS) -> AttributionIndex:
        """A new, empty index at ``path`` (which must not hold one yet). ``projection`` records how rows were made
        (kind, seed, dims) and ``info`` anything else the caller wants bound into the manifest checksum (adapter
        id, datanet version roots); both must be JSON."""
        path = Path(path)
        if not isinstance(dim, int) or dim < 1:
            raise InvalidInput(f"dim must be a positive integer (got {dim!r})", field="dim")
        if not isinstance(step, int) or step < 0:
            raise InvalidInput(f"step must be a non-negative integer (got {step!r})", field="step")
        if not isinstance(shard_rows, int) or shard_rows < 1:
            raise InvalidInput(f"shard_rows must be a positive integer (got {shard_rows!r})", field="shard_rows")
        for name, value in (("projection", projection), ("info", info or {})):
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"{name} must be JSON-serialisable: {exc}", field=name) from None
        if (path / MANIFEST).exists():
            raise Conflict(f"{path} already holds an attribution index: open it, or choose another directory",
                           field="path")
        path.mkdir(parents=True, exist_ok=True)
        gram = f"gram-{0:012d}.f64"
        manifest: dict[str, Any] = {
            "format": FORMAT, "dim": dim, "dtype": "float16", "step": step, "projection": projection,
            "info": info or {}, "shard_rows": shard_rows, "rows": 0, "shards": [], "gram": gram,
            "preconditioner": None, "files": {},
        }
        with _write_lock(path):
            manifest["files"][gram] = _write_file(path / gram, np.zeros((dim, dim), np.float64).tobytes())
            _commit_manifest(path, manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | Path, *, verify: Literal["fast", "full"] = "fast") -> AttributionIndex:
        """Open an index, checking it first. ``fast``: the manifest parses, is in canonical form and matches its
        checksum, and every file it names has the recorded size. ``full``: also every file's SHA-256. Damage
        raises VerificationFailed naming the file."""
        path = Path(path)
        return cls(path, _verified_manifest(path, full=verify == "full"))

    def verify(self) -> None:
        """Re-check every file's SHA-256 against the manifest on disk (and that it is still this index's)."""
        manifest = _verified_manifest(self.path, full=True)
        if manifest["checksum"] != self.checksum:
            raise VerificationFailed(f"{self.path / MANIFEST} changed since this index was opened "
                                     f"(checksum {manifest['checksum'][:12]}, was {self.checksum[:12]})")

    # ------------------------------------------------------------------------------------------------------------
    # what it holds
    # ------------------------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def step(self) -> int:
        return int(self._manifest["step"])

    @property
    def rows(self) -> int:
        """Committed rows (appended rows count once their shard is written: a full shard, or ``flush``)."""
        return int(self._manifest["rows"])

    def __len__(self) -> int:
        return self.rows

    @property
    def projection(self) -> dict[str, Any]:
        return dict(self._manifest["projection"])

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._manifest["info"])

    @property
    def checksum(self) -> str:
        """The manifest checksum: names this exact index state (every file's hash is under it)."""
        return str(self._manifest["checksum"])

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._manifest))

    def meta(self, row: int) -> RowMeta:
        cols = self._load_columns()
        if not 0 <= row < self.rows:
            raise InvalidInput(f"row {row} is out of range: the index has {self.rows} rows", field="row")
        return RowMeta(**{name: cols[name][row].item() if isinstance(cols[name], np.ndarray) else cols[name][row]
                          for name in RowMeta.__dataclass_fields__})

    def column(self, name: str) -> np.ndarray | list[str]:
        """One metadata column over all committed rows (numbers as an array, ids as a list); also ``exponent``
        and ``row_norm`` (the float64 norm of the decoded row)."""
        cols = self._load_columns()
        if name not in cols:
            raise InvalidInput(f"no column {name!r}; columns: {', '.join(sorted(cols))}", field="column")
        return cols[name].copy()

    def decode(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Decoded rows ``start:stop`` as float64 [m, dim]: exactly the values scores are computed from."""
        stop = self.rows if stop is None else stop
        if not 0 <= start <= stop <= self.rows:
            raise InvalidInput(f"rows {start}:{stop} are out of range 0:{self.rows}", field="rows")
        scale = _powers(self._load_columns()["exponent"][start:stop])
        parts, offset = [], 0
        for mm in self._maps_():
            lo, hi = max(start - offset, 0), min(stop - offset, len(mm))
            if lo < hi:
                parts.append(mm[lo:hi].astype(np.float64))
            offset += len(mm)
        out = np.concatenate(parts) if parts else np.zeros((0, self.dim))
        return out * scale[:, None]

    # ------------------------------------------------------------------------------------------------------------
    # writing
    # ------------------------------------------------------------------------------------------------------------

    def append(self, rows: np.ndarray, meta: Sequence[RowMeta]) -> None:
        """Add rows ([n, dim], finite) with one RowMeta each (``step`` must be the index's). Full shards are written
        at once; the remainder waits for the next append or :meth:`flush`."""
        arr = np.asarray(rows)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise InvalidInput(f"rows must have shape [n, {self.dim}] (got {list(arr.shape)})", field="rows")
        if arr.shape[0] != len(meta):
            raise InvalidInput(f"{arr.shape[0]} rows but {len(meta)} metadata entries: give one RowMeta per row",
                               field="meta")
        if not np.issubdtype(arr.dtype, np.floating):
            raise InvalidInput(f"rows must be floating point (got {arr.dtype})", field="rows")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            raise InvalidInput(f"row {bad} has a NaN or infinite value: recompute its gradient", field="rows")
        for i, m in enumerate(meta):
            _check_meta(i, m, self.step)
        self._pending.append((arr, list(meta)))
        self._pending_rows += arr.shape[0]
        if self._pending_rows >= int(self._manifest["shard_rows"]):
            self._write_pending(final=False)

    def flush(self) -> None:
        """Write every buffered row (as one more shard) and commit."""
        self._write_pending(final=True)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.flush()
        else:  # a failed capture must not commit half of its rows
            self._pending, self._pending_rows = [], 0

    def _write_pending(self, *, final: bool) -> None:
        if not self._pending_rows:
            return
        rows = np.concatenate([r for r, _ in self._pending])
        meta = [m for _, ms in self._pending for m in ms]
        shard_rows = int(self._manifest["shard_rows"])
        cut = len(rows) if final else len(rows) - len(rows) % shard_rows
        with _write_lock(self.path):
            on_disk = _verified_manifest(self.path, full=False)
            if on_disk["checksum"] != self.checksum:
                raise Conflict(f"{self.path} was changed by another writer since it was opened: reopen it and "
                               "append again", field="path")
            manifest = json.loads(json.dumps(self._manifest))
            gram = self._gram_sum(manifest)
            old = [manifest["gram"]]
            if manifest["preconditioner"]:  # new rows make the old preconditioner stale
                old += [manifest["preconditioner"]["factor"], manifest["preconditioner"]["norms"]]
                manifest["preconditioner"] = None
            for start in range(0, cut, shard_rows):
                stop = min(start + shard_rows, cut)
                self._write_shard(manifest, rows[start:stop], meta[start:stop], gram)
            manifest["gram"] = f"gram-{manifest['rows']:012d}.f64"
            manifest["files"][manifest["gram"]] = _write_file(self.path / manifest["gram"], gram.tobytes())
            for name in old:
                manifest["files"].pop(name)
            _commit_manifest(self.path, manifest)
            for name in old:  # after the commit: until then the old manifest still names them
                (self.path / name).unlink(missing_ok=True)
        self._manifest = manifest
        self._pending = [(rows[cut:], meta[cut:])] if cut < len(rows) else []
        self._pending_rows = len(rows) - cut
        self._maps, self._columns, self._codes, self._precond = None, None, {}, None

    def _write_shard(self, manifest: dict[str, Any], rows: np.ndarray, meta: list[RowMeta],
                     gram: np.ndarray) -> None:
        """Encode rows [n, dim] (float64) into a new shard, add Σ φφᵀ of the decoded rows to ``gram``."""
        # e = frexp exponent of the row's max |value| - 15: max |value| / 2^e lies in [2^14, 2^15).
        peak = np.abs(rows).max(axis=1)
        exponent = np.where(peak > 0, np.frexp(peak)[1] - _TOP_EXPONENT, 0).astype(np.int64)
        stored = np.ldexp(rows, -exponent[:, None].astype(np.int32)).astype("<f2")  # [n, dim]
        decoded = stored.astype(np.float64) * _powers(exponent)[:, None]
        _add_gram(gram, decoded)
        number = len(manifest["shards"])
        name = f"shard-{number:05d}"
        columns: dict[str, list[Any]] = {f: [getattr(m, f) for m in meta] for f in RowMeta.__dataclass_fields__}
        columns["grad_norm"] = [float(v) for v in columns["grad_norm"]]
        columns["exponent"] = exponent.tolist()
        columns["row_norm"] = np.sqrt(np.einsum("ij,ij->i", decoded, decoded)).tolist()
        body = json.dumps({"rows": len(rows), "columns": columns}, sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode()
        manifest["files"][f"{name}.f16"] = _write_file(self.path / f"{name}.f16", stored.tobytes())
        manifest["files"][f"{name}.json"] = _write_file(self.path / f"{name}.json", body)
        manifest["shards"].append({"rows": f"{name}.f16", "meta": f"{name}.json", "count": len(rows)})
        manifest["rows"] += len(rows)

    def _gram_sum(self, manifest: dict[str, Any]) -> np.ndarray:
        raw = (self.path / manifest["gram"]).read_bytes()
        return np.frombuffer(raw, dtype="<f8").reshape(self.dim, self.dim).copy()

    # ------------------------------------------------------------------------------------------------------------
    # preconditioner
    # ------------------------------------------------------------------------------------------------------------

    def build_preconditioner(self, damping: float = DEFAULT_DAMPING) -> Preconditioner:
        """Factor H = F + λI once (F = ΦᵀΦ/n, λ = damping × trace(F)/dim), store it and every row's norm under
        H⁻¹ beside the index, and commit. Appending rows later drops it (it would be stale)."""
        if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping > 0):
            raise InvalidInput(f"damping must be a positive number (got {damping!r})", field="damping")
        if self._pending_rows:
            raise Conflict(f"{self._pending_rows} appended rows are not written yet: flush() first", field="rows")
        n, dim = self.rows, self.dim
        if n == 0:
            raise Conflict("the index has no rows: append gradients before building a preconditioner", field="rows")
        fisher = self._gram_sum(self._manifest) / n
        mean_eig = float(np.trace(fisher)) / dim
        if mean_eig <= 0:
            raise Conflict("every row of the index is zero: there is nothing to precondition", field="rows")
        lam = float(damping) * mean_eig
        with _torch_threads() as torch:
            h = torch.from_numpy(fisher) + lam * torch.eye(dim, dtype=torch.float64)
            factor = torch.linalg.cholesky(h)  # [dim, dim] lower
            h_inv = torch.cholesky_inverse(factor)
            factor_np = factor.numpy().copy()
        norms = np.empty(n, np.float64)

        def row_norms(start: int, block: torch.Tensor) -> None:  # block: decoded rows [c, dim] float64
            quad = ((block @ h_inv) * block).sum(dim=1)  # φᵀ H⁻¹ φ, [c]
            norms[start : start + len(block)] = quad.clamp_min(0).sqrt().numpy()

        self._map_blocks(row_norms, scaled=True)
        manifest = json.loads(json.dumps(self._manifest))
        names = {"factor": f"precond-{n:012d}.f64", "norms": f"precond-norms-{n:012d}.f64"}
        with _write_lock(self.path):
            on_disk = _verified_manifest(self.path, full=False)
            if on_disk["checksum"] != self.checksum:
                raise Conflict(f"{self.path} was changed by another writer since it was opened: reopen it",
                               field="path")
            old = manifest["preconditioner"]
            if old:
                for key in ("factor", "norms"):
                    manifest["files"].pop(old[key])
            manifest["files"][names["factor"]] = _write_file(self.path / names["factor"], factor_np.tobytes())
            manifest["files"][names["norms"]] = _write_file(self.path / names["norms"], norms.tobytes())
            manifest["preconditioner"] = {"damping": float(damping), "lambda": lam, "mean_eigenvalue": mean_eig,
                                          "mean": "trace/dim", "rows": n, **names}
            _commit_manifest(self.path, manifest)
            if old:
                for key in ("factor", "norms"):
                    if old[key] != names[key]:
                        (self.path / old[key]).unlink(missing_ok=True)
        self._manifest = manifest
        self._precond = Preconditioner(float(damping), lam, mean_eig, n, factor_np, norms)
        return self._precond

    @property
    def preconditioner(self) -> Preconditioner | None:
        """The stored preconditioner, or None when none was built since the last append."""
        entry = self._manifest["preconditioner"]
        if entry is None:
            return None
        if self._precond is None:
            dim, n = self.dim, int(entry["rows"])
            factor = np.fromfile(self.path / entry["factor"], dtype="<f8").reshape(dim, dim)
            norms = np.fromfile(self.path / entry["norms"], dtype="<f8")
            if len(norms) != n:
                raise VerificationFailed(f"{self.path / entry['norms']} holds {len(norms)} norms, expected {n}")
            self._precond = Preconditioner(float(entry["damping"]), float(entry["lambda"]),
                                           float(entry["mean_eigenvalue"]), n, factor, norms)
        return self._precond

    # ------------------------------------------------------------------------------------------------------------
    # scoring
    # ------------------------------------------------------------------------------------------------------------

    def score(self, queries: np.ndarray, *, precondition: bool = False, normalize: bool = False) -> np.ndarray:
        """Scores of queries [Q, dim] (or [dim]) against every committed row: float64 [Q, N] (or [N]).

        Plain: qᵀφ_i. ``precondition``: qᵀH⁻¹φ_i (build_preconditioner first). ``normalize``: divided by both
        norms, in the same metric (‖·‖, or ‖·‖ under H⁻¹ when preconditioned), so the score is a cosine in
        [-1, 1] and high-norm rows cannot dominate; a zero row or query scores 0. Higher is more helpful when
        rows and queries are gradients of log-likelihoods (or both of losses)."""
        q = np.asarray(queries)
        single = q.ndim == 1
        q = q[None, :] if single else q
        if q.ndim != 2 or q.shape[1] != self.dim or q.shape[0] < 1:
            raise InvalidInput(f"queries must have shape [Q, {self.dim}] or [{self.dim}] "
                               f"(got {list(np.shape(queries))})", field="query")
        if not np.issubdtype(q.dtype, np.floating) or not np.isfinite(q).all():
            raise InvalidInput("queries must be finite floating-point numbers", field="query")
        q = q.astype(np.float64)
        pre = self.preconditioner if precondition else None
        if precondition and pre is None:
            raise Conflict("this index has no current preconditioner (none built, or rows were appended since): "
                           "call build_preconditioner() first", field="precondition")
        n = self.rows
        out = np.empty((q.shape[0], n), np.float64)
        with _torch_threads() as torch:
            qt = torch.from_numpy(q.T.copy())  # [dim, Q]
            if pre is not None:
                qt = torch.cholesky_solve(qt, torch.from_numpy(pre.factor))  # H⁻¹ q, [dim, Q]
            q_norm_sq = (torch.from_numpy(q.T.copy()) * qt).sum(dim=0).numpy() if pre is not None else None

        def scores(start: int, block: torch.Tensor) -> None:  # block: stored rows as float64 [c, dim]
            out[:, start : start + len(block)] = (block @ qt).numpy().T  # [Q, c]

        if n:
            self._map_blocks(scores, scaled=False)
        if n:
            out *= _powers(self._load_columns()["exponent"])  # undo the per-row power of two: exact
        if normalize:
            if pre is not None:
                row_norms, q_norms = pre.row_norms, np.sqrt(np.clip(q_norm_sq, 0, None))
            else:
                row_norms, q_norms = self._load_columns()["row_norm"], np.sqrt(np.einsum("ij,ij->i", q, q))
            inv_row = np.divide(1.0, row_norms, out=np.zeros_like(row_norms), where=row_norms > 0)
            inv_q = np.divide(1.0, q_norms, out=np.zeros_like(q_norms), where=q_norms > 0)
            out *= inv_row[None, :]
            out *= inv_q[:, None]
        return out[0] if single else out

    def top(self, scores: np.ndarray, k: int) -> list[Hit]:
        """The k highest-scoring rows of one query's scores [N], best first; ties go to the lower row number."""
        s = self._check_scores(scores)
        if not isinstance(k, int) or k < 1:
            raise InvalidInput(f"k must be a positive integer (got {k!r})", field="k")
        k = min(k, len(s))
        if k == 0:
            return []
        # Everything tied with the k-th best is a candidate, so the result does not depend on argpartition's order.
        kth = np.partition(s, len(s) - k)[len(s) - k]
        candidates = np.flatnonzero(s >= kth)
        order = candidates[np.lexsort((candidates, -s[candidates]))][:k]
        return [Hit(int(i), float(s[i]), self.meta(int(i))) for i in order]

    def per_contributor(self, scores: np.ndarray) -> dict[str, float]:
        """Σ max(score, 0) per contributor account, for contributors with a positive total, largest first."""
        return self._positive_sums(scores, "contributor")

    def per_datanet(self, scores: np.ndarray) -> dict[str, float]:
        """Σ max(score, 0) per datanet id, for datanets with a positive total, largest first."""
        return self._positive_sums(scores, "datanet_id")

    # ------------------------------------------------------------------------------------------------------------

    def _check_scores(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != (self.rows,):
            raise InvalidInput(f"scores must be one query's scores, shape [{self.rows}] (got {list(s.shape)})",
                               field="scores")
        return s

    def _positive_sums(self, scores: np.ndarray, column: str) -> dict[str, float]:
        s = self._check_scores(scores)
        codes, names = self._codes_for(column)
        # bincount adds in row order, in float64: deterministic.
        sums = np.bincount(codes, weights=np.maximum(s, 0.0), minlength=len(names))
        order = sorted((i for i in range(len(names)) if sums[i] > 0), key=lambda i: (-sums[i], names[i]))
        return {names[i]: float(sums[i]) for i in order}

    def _codes_for(self, column: str) -> tuple[np.ndarray, list[str]]:
        if column not in self._codes:
            values = self._load_columns()[column]
            table: dict[str, int] = {}
            codes = np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int64, count=len(values))
            self._codes[column] = (codes, list(table))
        return self._codes[column]

    def _maps_(self) -> list[np.ndarray]:
        if self._maps is None:
            # mode "c" (private copy-on-write): a writable view torch can wrap without copying; the file never changes.
            self._maps = [np.memmap(self.path / s["rows"], dtype="<f2", mode="c", shape=(s["count"], self.dim))
                          for s in self._manifest["shards"]]
        return self._maps

    def _map_blocks(self, fn: Callable[[int, torch.Tensor], None], *, scaled: bool) -> None:
        """Call ``fn(first row, rows [c, dim] float64)`` for every committed row, in blocks of SCORE_CHUNK rows per
        shard (``scaled``: decoded values, else the stored float16 values without the row exponents). The block is
        a reused buffer: ``fn`` must copy what it keeps, and only write rows of its own block.

        SCORE_THREADS Python threads take every SCORE_THREADS-th block, each with torch at one intra-op thread. Not
        torch's own threading: that puts an OpenMP barrier in every copy and matmul (thousands per query), and when
        another process holds a core those barriers spin, measured 6-40 s instead of 0.4 s at 1M rows. A row's
        result does not depend on which thread computed it."""
        import torch

        exponents = self._load_columns()["exponent"] if scaled else None
        blocks, offset = [], 0
        for mm in self._maps_():
            shard = torch.from_numpy(mm)
            blocks += [(offset + lo, shard[lo : lo + SCORE_CHUNK]) for lo in range(0, len(mm), SCORE_CHUNK)]
            offset += len(mm)

        def work(worker: int) -> None:
            torch.set_num_threads(1)  # this thread's OpenMP and MKL
            buf32 = torch.empty((SCORE_CHUNK, self.dim), dtype=torch.float32)
            buf = torch.empty((SCORE_CHUNK, self.dim), dtype=torch.float64)
            for start, rows in blocks[worker::SCORE_THREADS]:
                block = buf[: len(rows)]
                # float16 -> float32 -> float64, both exact; ~1.5x faster than torch's direct float16 -> float64
                # conversion, which is not vectorised.
                block.copy_(buf32[: len(rows)].copy_(rows))
                if exponents is not None:
                    block.mul_(torch.from_numpy(_powers(exponents[start : start + len(rows)]))[:, None])
                fn(start, block)

        before = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(SCORE_THREADS, thread_name_prefix="royalty-index") as pool:
                list(pool.map(work, range(SCORE_THREADS)))  # list(): re-raise a worker's exception here
        finally:
            torch.set_num_threads(before)  # MKL's count is process-wide

    def _load_columns(self) -> dict[str, Any]:
        if self._columns is None:
            cols: dict[str, list[Any]] = {name: [] for name in (*_STRING_COLUMNS, *_INT_COLUMNS, *_FLOAT_COLUMNS)}
            for shard in self._manifest["shards"]:
                path = self.path / shard["meta"]
                try:
                    body = json.loads(path.read_bytes())
                    for name, values in cols.items():
                        column = body["columns"][name]
                        if len(column) != shard["count"]:
                            raise ValueError(f"column {name} has {len(column)} values, expected {shard['count']}")
                        values.extend(column)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise VerificationFailed(f"{path} is damaged ({exc}): run a full verification") from None
            out: dict[str, Any] = {name: cols[name] for name in _STRING_COLUMNS}
            out.update({name: np.asarray(cols[name], dtype=np.int64) for name in _INT_COLUMNS})
            out.update({name: np.asarray(cols[name], dtype=np.float64) for name in _FLOAT_COLUMNS})
            self._columns = out
        return self._columns


# ----------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------


def _powers(exponents: np.ndarray) -> np.ndarray:
    """2.0 ** exponents as float64, exactly."""
    return np.ldexp(1.0, exponents.astype(np.int32))


def _add_gram(gram: np.ndarray, decoded: np.ndarray) -> None:
    """gram += decoded ᵀ decoded in float64, in fixed chunks (same input, same bits)."""
    with _torch_threads() as torch:
        g = torch.from_numpy(gram)
        for lo in range(0, len(decoded), SCORE_CHUNK):
            x = torch.from_numpy(decoded[lo : lo + SCORE_CHUNK])
            g.addmm_(x.T, x)


def _canonical(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode()


def _checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                     allow_nan=False).encode()).hexdigest()


def _commit_manifest(path: Path, manifest: dict[str, Any]) -> None:
    manifest["checksum"] = _checksum(manifest)
    _write_file(path / MANIFEST, _canonical(manifest))


def _verified_manifest(path: Path, *, full: bool) -> dict[str, Any]:
    where = path / MANIFEST
    try:
        raw = where.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no attribution index at {path} ({MANIFEST} is missing)", field="path") from None
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationFailed(f"{where} is corrupt: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise VerificationFailed(f"{where} is corrupt: not a JSON object")
    # Canonical bytes too, so a change that parses the same (whitespace) is still a change.
    if manifest.get("checksum") != _checksum(manifest) or _canonical(manifest) != raw:
        raise VerificationFailed(f"{where} is corrupt: its content does not match its checksum")
    if manifest.get("format") != FORMAT:
        raise VerificationFailed(f"{where} has format {manifest.get('format')!r}; this royalty reads {FORMAT!r}")
    missing = sorted(_MANIFEST_KEYS - manifest.keys())
    if missing:
        raise VerificationFailed(f"{where} is incomplete: it lacks {', '.join(missing)}")
    for name, entry in manifest["files"].items():
        file = path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise VerificationFailed(f"{file} is missing (named in {MANIFEST})") from None
        if size != entry["bytes"]:
            raise VerificationFailed(f"{file} is corrupt: {size} bytes, the manifest says {entry['bytes']}")
        if full and _sha256(file) != entry["sha256"]:
            raise VerificationFailed(f"{file} is corrupt: its SHA-256 does not match the manifest")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync the directory); its manifest entry."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@contextlib.contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    try:
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open {path / '.lock'}: {exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"{path} is being written by another process: wait for it to finish", field="path") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _torch_threads(threads: int = SCORE_THREADS) -> Iterator[Any]:
    """torch with a fixed thread count for the duration (restored after)."""
    import torch

    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield torch
    finally:
        if before != threads:
            torch.set_num_threads(before)


def _check_meta(i: int, m: RowMeta, step: int) -> None:
    if not isinstance(m, RowMeta):
        raise InvalidInput(f"meta[{i}] must be a RowMeta (got {type(m).__name__})", field="meta")
    for name in _STRING_COLUMNS:
        value = getattr(m, name)
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"meta[{i}].{name} must be a non-empty string (got {value!r})", field=f"meta.{name}")
    for name in ("version", "position", "example_index", "step"):
        value = getattr(m, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"meta[{i}].{name} must be a non-negative integer (got {value!r})", field=f"meta.{name}")
    if m.step != step:
        raise InvalidInput(f"meta[{i}].step is {m.step} but this index holds step {step}: use one index per "
                           "checkpoint", field="meta.step")
    if not (isinstance(m.grad_norm, (int, float)) and math.isfinite(m.grad_norm) and m.grad_norm >= 0):
        raise InvalidInput(f"meta[{i}].grad_norm must be a finite non-negative number (got {m.grad_norm!r})",
                           field="meta.grad_norm")
