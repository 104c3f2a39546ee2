"""Seeded random projections of per-example LoRA gradients: the same numbers on every run, process and platform.

A LoRA module (``y = W x + s · B A x``, A: [r, d_in], B: [d_out, r]) has two gradient *parts*, ``gA`` [r, d_in]
and ``gB`` [d_out, r]. A :class:`Projector` maps each part to a few numbers; the concatenation over the layout's
modules (in layout order, A before B) is the projected gradient of length ``Projector.dim``.

Kinds:

- ``factorised`` (LoGra-style): the wide side of each part is projected and the rank side kept,
  ``gA → gA P_inᵀ`` ([r, k_in], P_in: [k_in, d_in]) and ``gB → P_out gB`` ([k_out, r], P_out: [k_out, d_out]).
  The matrices are small (k × d), so this scales to large models. Since the projection is linear it equals
  projecting every token's activation and output gradient before their outer product.
- ``dense``: a full JL matrix per part, ``vec(g) → P vec(g)`` (P: [k, r·d]); lower distortion for the same
  dimension, but P has k·r·d entries per part, so it is meant for small adapters.

Both give unbiased inner products, ``E[⟨Pg, Pg'⟩] = ⟨g, g'⟩``: entries are random signs scaled by ``1/√k``
(Achlioptas' JL projection). The target dimension is shared among the parts in proportion to their sizes
(largest remainder for ``dense``; ``factorised`` rounds each k down to a whole number of rank-r blocks, so its
``dim`` may be a little below the one asked for; ``.dim`` is the real one).

Determinism. Every matrix is regenerated from ``(kind, seed, module name, part)``: its signs are the bits of a
SHAKE-256 stream keyed by those, so nothing large is stored, and the matrices are identical bit for bit on every
platform and library version (no RNG whose stream could change). ``fingerprint()`` hashes the description and
every matrix, for an index manifest. Matrix products run in float32 with the caller's thread count; the results
are identical across runs and processes on one platform for a fixed thread count.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInput

if TYPE_CHECKING:
    import torch

FORMAT = "royalty.projection/1"
KINDS = ("factorised", "dense")
# A dense projection holds k·r·d float32 numbers per part; past this it is the wrong tool (use factorised).
_DENSE_MAX_ENTRIES = 1 << 28  # 1 GiB of float32


@dataclass(frozen=True)
class LoraModuleShape:
    """One LoRA linear module of a model: its name (as in ``named_modules``), d_in, d_out and rank r.
    Its gradient has ``r · (d_in + d_out)`` numbers: gA [r, d_in] then gB [d_out, r], each row-major."""

    name: str
    d_in: int
    d_out: int
    r: int

    @property
    def size(self) -> int:
        return self.r * (self.d_in + self.d_out)


def full_dim(layout: list[LoraModuleShape]) -> int:
    """Length of the unprojected per-example gradient of ``layout``: the number of LoRA parameters."""
    return sum(m.size for m in layout)


class Projector:
    """A seeded projection of LoRA gradients to ``dim`` numbers (see the module docstring).

    ``Projector(layout, dim, seed, kind="factorised")``; ``dim`` is the target (``.dim`` the real dimension, at
    most the target). Raises InvalidInput when ``dim`` is smaller than the number of parts (2 per module) or the
    kind is unknown, or a dense projection would be too large.
    """

    def __init__(self, layout: list[LoraModuleShape], dim: int, seed: int, kind: str = "factorised") -> None:
        if kind not in KINDS:
            raise InvalidInput(f"projection kind must be one of {', '.join(KINDS)} (got {kind!r})", field="kind")
        if not layout:
            raise InvalidInput("the projection layout is empty: the model has no LoRA modules", field="layout")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InvalidInput(f"the projection seed must be an integer >= 0 (got {seed!r})", field="seed")
        parts = 2 * len(layout)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < parts:
            raise InvalidInput(
                f"projection dim must be an integer >= {parts} (two parts per LoRA module, {len(layout)} modules; "
                f"got {dim!r}); raise dim or use the exact gradient (no projector)",
                field="dim",
            )
        self.layout = list(layout)
        self.kind = kind
        self.seed = seed
        self.requested_dim = dim
        # Part p of module m: (rows, cols) of its gradient; the projected width is k_p numbers.
        sizes = [s for m in layout for s in (m.r * m.d_in, m.d_out * m.r)]
        shares = _largest_remainder(sizes, dim)
        self._k: dict[tuple[str, str], int] = {}  # k per part: numbers out (dense) or projected side (factorised)
        for i, m in enumerate(layout):
            for j, (part, wide) in enumerate((("A", m.d_in), ("B", m.d_out))):
                share = shares[2 * i + j]
                if kind == "factorised":
                    self._k[(m.name, part)] = max(1, share // m.r)
                else:
                    if share * m.r * wide > _DENSE_MAX_ENTRIES:
                        raise InvalidInput(
                            f"a dense projection of module {m.name} would hold {share * m.r * wide:,} numbers; use "
                            "kind='factorised' for a model this size",
                            field="kind",
                        )
                    self._k[(m.name, part)] = share
        width = {(m.name, p): (m.r if kind == "factorised" else 1) * self._k[(m.name, p)]
                 for m in layout for p in ("A", "B")}
        self.module_dims = {m.name: width[(m.name, "A")] + width[(m.name, "B")] for m in layout}
        self.dim = sum(self.module_dims.values())
        self._matrices: dict[tuple[str, str, str], Any] = {}  # (name, part, device) -> float32 matrix, made on first use

    def describe(self) -> dict[str, Any]:
        """What regenerates this projector (for a manifest): format, kind, seed, target and real dim, layout."""
        return {
            "format": FORMAT, "kind": self.kind, "seed": self.seed, "requested_dim": self.requested_dim,
            "dim": self.dim, "layout": [asdict(m) for m in self.layout],
        }

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> Projector:
        """The projector ``describe()`` described. Raises InvalidInput for another format or a damaged record."""
        if description.get("format") != FORMAT:
            raise InvalidInput(f"projection format {description.get('format')!r} is not {FORMAT}; rebuild the index "
                               "with this version of royalty", field="projection")
        try:
            layout = [LoraModuleShape(**m) for m in description["layout"]]
            projector = cls(layout, description["requested_dim"], description["seed"], description["kind"])
        except (KeyError, TypeError) as exc:
            raise InvalidInput(f"the projection description is damaged ({exc}); rebuild the index",
                               field="projection") from None
        if projector.dim != description.get("dim"):
            raise InvalidInput(f"the projection description says dim {description.get('dim')} but regenerates "
                               f"{projector.dim}; rebuild the index", field="projection")
        return projector

    def fingerprint(self) -> str:
        """SHA-256 (hex) over the description and every matrix: equal fingerprints mean equal projections."""
        digest = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode("utf-8"))
        for m in self.layout:
            for part in ("A", "B"):
                digest.update(self._matrix(m, part).numpy().tobytes())  # CPU copy
        return digest.hexdigest()

    def project_module(self, name: str, g_a: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
        """Project one module's per-example gradients: ``g_a`` [B, r, d_in], ``g_b`` [B, d_out, r] (float32)
        → [B, module_dims[name]], the projected A part then the B part."""
        import torch

        module = self._module(name)
        if tuple(g_a.shape[1:]) != (module.r, module.d_in) or tuple(g_b.shape[1:]) != (module.d_out, module.r):
            raise InvalidInput(
                f"gradients of {name} have shapes {tuple(g_a.shape[1:])} and {tuple(g_b.shape[1:])}; the projection "
                f"layout says ({module.r}, {module.d_in}) and ({module.d_out}, {module.r}): a projector of another "
                "model or LoRA config",
                field="projection",
            )
        p_a, p_b = self._matrix(module, "A", g_a.device), self._matrix(module, "B", g_a.device)
        b = g_a.shape[0]
        if self.kind == "factorised":
            out_a = g_a @ p_a.T  # [B, r, d_in] @ [d_in, k_in] -> [B, r, k_in]
            out_b = p_b @ g_b  # [k_out, d_out] @ [B, d_out, r] -> [B, k_out, r]
        else:
            out_a = g_a.reshape(b, -1) @ p_a.T  # [B, r·d_in] @ [r·d_in, k_A] -> [B, k_A]
            out_b = g_b.reshape(b, -1) @ p_b.T  # [B, d_out·r] @ [d_out·r, k_B] -> [B, k_B]
        return torch.cat([out_a.reshape(b, -1), out_b.reshape(b, -1)], dim=1)

    def project_rows(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Full per-example gradients [B, full_dim(layout)] (layout order, each module's gA then gB, row-major;
        what ``LoraGradientCapture`` gives without a projector) → [B, dim] float32."""
        import torch

        full = torch.as_tensor(rows, dtype=torch.float32)
        if full.ndim != 2 or full.shape[1] != full_dim(self.layout):
            raise InvalidInput(f"rows must be [B, {full_dim(self.layout)}] full LoRA gradients (got "
                               f"{tuple(full.shape)})", field="projection")
        b, at, parts = full.shape[0], 0, []
        for m in self.layout:
            g_a = full[:, at : at + m.r * m.d_in].reshape(b, m.r, m.d_in)
            at += m.r * m.d_in
            g_b = full[:, at : at + m.d_out * m.r].reshape(b, m.d_out, m.r)
            at += m.d_out * m.r
            parts.append(self.project_module(m.name, g_a, g_b))
        return torch.cat(parts, dim=1)

    def _module(self, name: str) -> LoraModuleShape:
        for m in self.layout:
            if m.name == name:
                return m
        raise InvalidInput(f"module {name} is not in the projection layout: a projector of another model or LoRA "
                           "config", field="projection")

    def _matrix(self, module: LoraModuleShape, part: str, device: Any = "cpu") -> torch.Tensor:
        """The float32 matrix of one part on ``device``: factorised A [k, d_in], B [k, d_out]; dense [k, r·d]."""
        key = (module.name, part, str(device))
        if key not in self._matrices and str(device) != "cpu":
            self._matrices[key] = self._matrix(module, part).to(device)
        if key not in self._matrices:
            import torch

            k = self._k[(module.name, part)]
            wide = module.d_in if part == "A" else module.d_out
            cols = wide if self.kind == "factorised" else wide * module.r
            signs = _signs(f"{FORMAT}|{self.kind}|{self.seed}|{module.name}|{part}", k * cols)  # [k·cols] ±1
            matrix = signs.astype(np.float32).reshape(k, cols) * np.float32(1.0 / math.sqrt(k))
            self._matrices[key] = torch.from_numpy(matrix)
        return self._matrices[key]


def _signs(key: str, n: int) -> np.ndarray:
    """``n`` random signs (int8, ±1) from the SHAKE-256 stream of ``key``: the same on every platform."""
    bits = np.unpackbits(np.frombuffer(hashlib.shake_256(key.encode("utf-8")).digest((n + 7) // 8), dtype=np.uint8))
    return (bits[:n].astype(np.int8) << 1) - 1


def _largest_remainder(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` in proportion to ``sizes``, every share >= 1, shares summing to ``total`` (Hamilton's
    method on what is left after the ones; ties go to the earlier part)."""
    rest = total - len(sizes)
    whole = sum(sizes)
    exact = [rest * s / whole for s in sizes]
    shares = [math.floor(e) for e in exact]
    for i in sorted(range(len(sizes)), key=lambda i: (-(exact[i] - shares[i]), i))[: rest - sum(shares)]:
        shares[i] += 1
    return [1 + s for s in shares]
