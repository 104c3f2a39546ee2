"""Params: the protocol's governed parameters (fee split, protocol fees, staking cooldown, governance rules).

The values at genesis are ``Params()`` with overrides given to ``royalty init --param key=value``; after genesis
they change only when governance executes a proposal (``Params.set_in``). Every version is a row of the
append-only ``ledger_params`` table and a ``params.set`` journal event holding the full, validated set, so the
rules in force at any moment are known exactly: ``at(ms)`` answers for a past time (the quorum of a running
proposal uses the fraction in force at its snapshot, as OpenZeppelin's checkpointed quorum numerator does).

Amounts are base units (6 decimals); shares are basis points (1/10,000); durations are seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Connection, select, text

from ..errors import InvalidInput
from ..journal.log import Journal
from ..store import Store
from ..store.schema import ledger_params
from .amounts import UNIT
from .codes import AMOUNT_MAX

DAY = 86_400
_PARAMS_LOCK_KEY = 0x706172616D73  # "params"
BPS = 10_000


class Params(BaseModel):
    """Governed parameters. Defaults follow OpenLedger's governor (1 day voting delay, 1 week voting period,
    10,000 gOPEN proposal threshold, 4%+ quorum: we use 5%) and Aave's Safety Module (10 day cooldown, 2 day
    unstake window)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # --- supply -------------------------------------------------------------------------------------------------
    supply_cap: int = Field(10_000_000_000 * UNIT, ge=0, le=AMOUNT_MAX,
                            description="Maximum OPEN in existence (base units); mint refuses to exceed it.")
    # --- inference fee split (basis points, must sum to 10,000) -------------------------------------------------
    fee_treasury_bps: int = Field(1_000, ge=0, le=BPS, description="Share of each inference fee to the protocol treasury.")
    fee_owner_bps: int = Field(4_000, ge=0, le=BPS, description="Share of each inference fee to the adapter's owner.")
    fee_stakers_bps: int = Field(1_000, ge=0, le=BPS, description="Share of each inference fee to gOPEN stakers, pro rata.")
    fee_contributors_bps: int = Field(4_000, ge=0, le=BPS,
                                      description="Share of each inference fee to data contributors, by attribution weight.")
    fee_timeout_s: int = Field(600, ge=1, le=30 * DAY,
                               description="How long a reserved inference fee waits for settlement before it expires.")
    # --- protocol fees ------------------------------------------------------------------------------------------
    publish_fee_base: int = Field(1 * UNIT, ge=0, le=AMOUNT_MAX,
                                  description="Fixed part of the datanet publishing fee (base units).")
    publish_fee_per_1k: int = Field(UNIT // 10, ge=0, le=AMOUNT_MAX,
                                    description="Datanet publishing fee per 1,000 contributions in the version, rounded up.")
    adapter_registration_fee: int = Field(10 * UNIT, ge=0, le=AMOUNT_MAX,
                                          description="Fee to register an adapter (base units), paid to the treasury.")
    # --- attribution ----------------------------------------------------------------------------------------------
    attribution_influence_bps: int = Field(7_000, ge=0, le=BPS, description=(
        "Share of the data's pay divided by gradient influence (bps); the rest by verbatim span credit."))
    # --- staking ------------------------------------------------------------------------------------------------
    stake_cooldown_s: int = Field(10 * DAY, ge=0, le=365 * DAY, description="Seconds from cooldown() until redeem is allowed.")
    stake_unstake_window_s: int = Field(2 * DAY, ge=1, le=365 * DAY,
                                        description="Seconds after the cooldown during which redeem is allowed.")
    # --- governance ---------------------------------------------------------------------------------------------
    gov_voting_delay_s: int = Field(DAY, ge=0, le=365 * DAY, description="Seconds from proposal to the voting snapshot.")
    gov_voting_period_s: int = Field(7 * DAY, ge=1, le=365 * DAY, description="Seconds voting stays open after the snapshot.")
    gov_proposal_threshold: int = Field(10_000 * UNIT, ge=0, le=AMOUNT_MAX,
                                        description="gOPEN voting power (base units) needed to propose.")
    gov_quorum_percent: int = Field(5, ge=0, le=100,
                                    description="Quorum: percent of the total gOPEN at the snapshot that must vote For or Abstain.")
    gov_timelock_delay_s: int = Field(DAY, ge=0, le=365 * DAY, description="Seconds a queued proposal waits before it can execute.")
    gov_grace_period_s: int = Field(14 * DAY, ge=1, le=365 * DAY,
                                    description="Seconds after the timelock during which a queued proposal can execute; then it expires.")

    @model_validator(mode="after")
    def _split_sums(self) -> Params:
        total = self.fee_treasury_bps + self.fee_owner_bps + self.fee_stakers_bps + self.fee_contributors_bps
        if total != BPS:
            raise ValueError(
                f"the fee split must sum to {BPS} basis points (fee_treasury_bps + fee_owner_bps + fee_stakers_bps "
                f"+ fee_contributors_bps), got {total}"
            )
        return self

    def with_changes(self, changes: Mapping[str, Any]) -> Params:
        """A validated copy with ``changes`` applied; every problem reported at once as one InvalidInput."""
        return build_params({**self.model_dump(), **dict(changes)})

    def publish_fee(self, contributions: int) -> int:
        """The datanet publishing fee for a version of ``contributions`` records."""
        return self.publish_fee_base + -(-contributions // 1000) * self.publish_fee_per_1k


def build_params(values: Mapping[str, Any]) -> Params:
    """Params from ``values`` (unknown keys, wrong types and a bad split all reported together)."""
    try:
        return Params(**dict(values))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "fee split"
            problems.append(f"{where}: {err['msg']}")
        field = next((str(e["loc"][0]) for e in exc.errors() if e["loc"]), None)
        raise InvalidInput("invalid params: " + "; ".join(problems), field=field) from None


def parse_param_assignments(items: list[str]) -> dict[str, Any]:
    """``["fee_owner_bps=3000", ...]`` from the CLI as a dict of ints (every Param is an integer)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--param {item!r}: use KEY=VALUE, e.g. fee_owner_bps=3000", field="param")
        if key not in Params.model_fields:
            raise InvalidInput(f"--param {key!r} is not a parameter; known: {', '.join(Params.model_fields)}", field="param")
        try:
            out[key] = int(value)
        except ValueError:
            raise InvalidInput(f"--param {key}={value!r}: the value must be an integer", field=key) from None
    return out


class ParamsRegistry:
    """The history of Params (``node.params``)."""

    def __init__(self, store: Store, journal: Journal, clock: Callable[[], int]) -> None:
        self.store = store
        self.journal = journal
        self.clock = clock

    def current(self) -> Params:
        with self.store.read() as conn:
            return self.current_in(conn)

    def current_in(self, conn: Connection) -> Params:
        row = conn.execute(select(ledger_params.c.values_json).order_by(ledger_params.c.seq.desc()).limit(1)).first()
        if row is None:
            return Params()
        return Params(**json.loads(row.values_json))

    def at(self, ms: int) -> Params:
        """The params in force at ledger time ``ms`` (the last version whose effective time is ≤ ms)."""
        with self.store.read() as conn:
            row = conn.execute(
                select(ledger_params.c.values_json)
                .where(ledger_params.c.effective_ms <= ms)
                .order_by(ledger_params.c.seq.desc())
                .limit(1)
            ).first()
        return Params() if row is None else Params(**json.loads(row.values_json))

    def history(self) -> list[dict[str, Any]]:
        with self.store.read() as conn:
            rows = conn.execute(select(ledger_params).order_by(ledger_params.c.seq)).all()
        return [{"seq": r.seq, "effective_ms": r.effective_ms, "params": json.loads(r.values_json),
                 "reason": r.reason} for r in rows]

    def set_in(self, conn: Connection, changes: Mapping[str, Any], *, reason: str, actor: str | None = None) -> Params:
        """Apply ``changes`` (validated against the whole set) in the caller's transaction; journals ``params.set``.

        Only genesis and governance's execute call this: there is no other way to change the rules."""
        if conn.dialect.name == "postgresql":
            # Read-modify-append: two concurrent calls must not both build on the same version (a lost update).
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PARAMS_LOCK_KEY})
        new = self.current_in(conn).with_changes(changes)
        values = new.model_dump()
        now = self.clock()
        event = self.journal.append(
            conn, "params.set", {"params": values, "changes": dict(sorted(changes.items())), "reason": reason,
                                 "effective_ms": now},
            actor=actor,
        )
        conn.execute(ledger_params.insert().values(
            seq=event.seq, effective_ms=now, values_json=json.dumps(values, sort_keys=True), reason=reason))
        return new
