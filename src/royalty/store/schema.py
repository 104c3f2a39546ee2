"""The relational schema (SQLAlchemy Core). Alembic migrations create it; ``tests/test_store.py`` checks that
the migrated database and these definitions agree.

Conventions: ids are text; times are integer Unix milliseconds (``*_ms``) so SQLite and PostgreSQL agree bit
for bit; hashes are raw 32-byte blobs; amounts (later) are integers in base units.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Node identity and other singletons: node_id, origin, public_key, genesis parameters.
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# --- journal -------------------------------------------------------------------------------------------------
# One row per event; leaf index in the Merkle tree = seq. body = canonical JSON bytes; leaf_hash = SHA-256(0x00||body).
journal_events = Table(
    "journal_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(64), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
)

# Hashes of complete perfect subtrees above the leaves: (level, idx) covers leaves [idx << level, (idx+1) << level).
# Immutable once written; they make inclusion and consistency proofs O(log n) lookups.
journal_nodes = Table(
    "journal_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    sqlite_with_rowid=False,
)

# A single row: the tree size and root. Writers lock it (FOR UPDATE on PostgreSQL) so sequence numbers are contiguous
# and never reused, whichever replica writes.
journal_head = Table(
    "journal_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
)

journal_checkpoints = Table(
    "journal_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

# --- accounts ------------------------------------------------------------------------------------------------
accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # The journal event that created it: the provenance link, and a total creation order.
    Column("created_seq", BigInteger, nullable=False, unique=True),
)

# scope '' = node-wide (admin); later 'datanet:<id>' for owner/curator.
account_roles = Table(
    "account_roles",
    metadata,
    Column("account_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("role", String(32), primary_key=True),
    Column("scope", String(80), primary_key=True),
)

# Only SHA-256 of the secret is stored; the key id is the public half of the key string.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("secret_hash", LargeBinary(32), nullable=False),
    Column("label", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
)

# --- datanets -------------------------------------------------------------------------------------------------
datanets = Table(
    "datanets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("slug", String(64), nullable=False, unique=True),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("licenses", Text, nullable=False),  # JSON list of SPDX ids
    Column("policy", String(16), nullable=False),  # open | curated
    Column("tags", Text, nullable=False),  # JSON list
    Column("owner_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("limits", Text, nullable=False),  # JSON object: DatanetLimits
    Column("created_ms", BigInteger, nullable=False),
    Column("created_seq", BigInteger, nullable=False),
)

# One row per accepted-or-queued contribution. (datanet_id, id) is the key: the same content may live in two
# datanets, never twice in one. content is the canonical record (NULL once purged: the id stays, a tombstone).
contributions = Table(
    "contributions",
    metadata,
    Column("datanet_id", String(40), ForeignKey("datanets.id"), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("ordinal", BigInteger, nullable=False),  # arrival order within the datanet; versions keep it
    Column("contributor_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("status", String(16), nullable=False),  # pending | accepted | rejected | withdrawn
    Column("license", String(64), nullable=False),
    Column("source", Text, nullable=False),
    Column("consent", Text, nullable=False),
    Column("tags", Text, nullable=False),  # JSON list
    Column("size_bytes", Integer, nullable=False),
    Column("content", LargeBinary, nullable=True),
    Column("minhash", LargeBinary, nullable=True),  # near-duplicate signature (uint32 x num_perm)
    Column("near_duplicate_of", String(64), nullable=True),
    Column("near_duplicate_score", Integer, nullable=True),  # Jaccard estimate in basis points
    Column("reason", Text, nullable=True),  # why rejected / the review note
    Column("reviewed_by", String(40), nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("created_seq", BigInteger, nullable=False),
    Column("updated_seq", BigInteger, nullable=False),
    Index("ix_contributions_order", "datanet_id", "ordinal", unique=True),
    Index("ix_contributions_quota", "datanet_id", "contributor_id", "created_ms"),
    Index("ix_contributions_status", "datanet_id", "status", "ordinal"),
)

datanet_versions = Table(
    "datanet_versions",
    metadata,
    Column("datanet_id", String(40), ForeignKey("datanets.id"), primary_key=True),
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("stats", Text, nullable=False),  # JSON: bytes, contributors, per-contributor counts
    Column("created_ms", BigInteger, nullable=False),
    Column("created_seq", BigInteger, nullable=False),
)

# The ordered members of a version: leaf `position` of its Merkle tree is contribution `contribution_id`.
datanet_version_members = Table(
    "datanet_version_members",
    metadata,
    Column("datanet_id", String(40), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("contribution_id", String(64), nullable=False),
    sqlite_with_rowid=False,
)

# The first contribution ordinal of each 256-member block of a version. Members are in arrival order, so a
# contribution's ordinal names its block; a proof reads that block anyway. (An ordinal index on the members
# instead cost 1.5 s of a 1M-member publish: a second B-tree with a row per member.)
datanet_version_blocks = Table(
    "datanet_version_blocks",
    metadata,
    Column("datanet_id", String(40), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("block", BigInteger, primary_key=True, autoincrement=False),
    Column("first_ordinal", BigInteger, nullable=False),
    Index("ix_version_blocks_ordinal", "datanet_id", "version", "first_ordinal", unique=True),
    sqlite_with_rowid=False,
)

# Perfect-subtree hashes of a version's tree at levels >= 8 only: lower levels are recomputed from the (at most
# 256) member ids under them, which keeps storage at n/256 rows and a proof at one small range read.
datanet_version_nodes = Table(
    "datanet_version_nodes",
    metadata,
    Column("datanet_id", String(40), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    sqlite_with_rowid=False,
)

# --- ledger (TigerBeetle model; see royalty.ledger) ----------------------------------------------------------
# Ids are 128-bit integers stored as 32 lowercase hex digits, so text order is numeric order (PostgreSQL locks
# accounts in ascending id order). Amounts and balances are BIGINT base units (< 2^63) on both backends.
ledger_accounts = Table(
    "ledger_accounts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("ledger", BigInteger, nullable=False),  # u32 asset (royalty.ledger.codes.Asset)
    Column("code", Integer, nullable=False),  # u16 account type
    Column("flags", Integer, nullable=False),
    Column("owner_id", String(40), ForeignKey("accounts.id"), nullable=True, index=True),
    Column("user_data", Text, nullable=True),
    # The only mutable columns: cumulative sums, changed only by transfers (and expiry of pending ones).
    Column("debits_pending", BigInteger, nullable=False),
    Column("debits_posted", BigInteger, nullable=False),
    Column("credits_pending", BigInteger, nullable=False),
    Column("credits_posted", BigInteger, nullable=False),
    Column("timestamp", BigInteger, nullable=False),  # ledger clock, ms
    Column("created_seq", BigInteger, nullable=False),  # the journal event that created it
    # History chain (migration 0007): how many transfers touched the account, and the position
    # (event_seq << 20 | event_index) of the newest; each transfer row points to the previous one.
    Column("version", BigInteger, nullable=False, server_default="0"),
    Column("last_pos", BigInteger, nullable=True),
)

# Immutable. Post/void transfers carry the pending transfer's accounts, ledger and code and the amount moved.
# (event_seq, event_index): the journal event of the create_transfers call and the position in its batch, a
# total order (history pagination).
ledger_transfers = Table(
    "ledger_transfers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("debit_account_id", String(32), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("credit_account_id", String(32), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("pending_id", String(32), nullable=True),
    Column("timeout", BigInteger, nullable=False),  # seconds
    Column("ledger", BigInteger, nullable=False),
    Column("code", Integer, nullable=False),
    Column("flags", Integer, nullable=False),
    Column("user_data", Text, nullable=True),
    Column("timestamp", BigInteger, nullable=False),  # ledger clock, ms
    Column("event_seq", BigInteger, nullable=False),
    Column("event_index", Integer, nullable=False),
    # Position of the previous transfer of the debit / credit account (NULL: its first). No index per account:
    # history walks these chains (royalty.ledger.core, migration 0007).
    Column("debit_prev", BigInteger, nullable=True),
    Column("credit_prev", BigInteger, nullable=True),
    Index("ix_ledger_transfers_order", "event_seq", "event_index", unique=True),
)

# The state of every pending transfer. A row changes once, from 'pending' to posted/voided/expired, and never
# again (a trigger refuses any later UPDATE and every DELETE: invariant I6 at the database).
ledger_pending = Table(
    "ledger_pending",
    metadata,
    Column("id", String(32), ForeignKey("ledger_transfers.id"), primary_key=True),
    Column("debit_account_id", String(32), nullable=False),
    Column("credit_account_id", String(32), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=True),  # timestamp + timeout; NULL: never
    Column("state", String(8), nullable=False),  # pending | posted | voided | expired
    Column("resolved_by", String(32), nullable=True),  # the post/void transfer
    Column("resolved_ms", BigInteger, nullable=True),
    Index("ix_ledger_pending_expiry", "state", "expires_ms"),
)

# Ids whose first attempt failed for a state-dependent reason: a retry answers id_already_failed forever (I5).
ledger_failures = Table(
    "ledger_failures",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("code", String(64), nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("event_seq", BigInteger, nullable=False),
)

# Every 32nd transfer of each account (version = 32, 64, ...): where history starts walking an account's chain.
# Derived from ledger_transfers, never changed.
ledger_history_marks = Table(
    "ledger_history_marks",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("pos", BigInteger, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# --- params (royalty.ledger.params) ---------------------------------------------------------------------------
# Every version of the governed parameters, full set each time; seq = the params.set journal event.
ledger_params = Table(
    "ledger_params",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("effective_ms", BigInteger, nullable=False),
    Column("values_json", Text, nullable=False),
    Column("reason", Text, nullable=False),
)

# --- staking and governance (royalty.ledger.staking, royalty.ledger.governance; migration 0005) ---------------
# staking: the mutable rows are locked FOR UPDATE in this order: staking_state → one staking_stakers row →
# staking_delegates rows (ascending id) → ledger accounts (the core) → journal head.
# The single row (id 1) of staking-wide state: total staked (= total gOPEN), the stakers' reward-per-token
# accumulator (a decimal string: amount x 1e18 / total can pass 2^63) and the total allocated by distribute_in.
staking_state = Table(
    "staking_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("total_staked", BigInteger, nullable=False),
    Column("reward_per_token", Text, nullable=False),
    Column("distributed", BigInteger, nullable=False),
)

# One row per participant who ever staked or delegated. staked mirrors the STAKED ledger account (the voting
# units); cooldown_budget is the Aave v1.5 redeem budget (0 and start NULL: no cooldown); reward_paid_rpt and
# rewards_stored are the Synthetix per-staker snapshot; claims counts claims (the derived claim transfer id).
staking_stakers = Table(
    "staking_stakers",
    metadata,
    Column("account_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("staked", BigInteger, nullable=False),
    Column("delegatee_id", String(40), ForeignKey("accounts.id"), nullable=True, index=True),
    Column("cooldown_start_ms", BigInteger, nullable=True),
    Column("cooldown_budget", BigInteger, nullable=False),
    Column("reward_paid_rpt", Text, nullable=False),
    Column("rewards_stored", BigInteger, nullable=False),
    Column("claims", BigInteger, nullable=False),
    Column("updated_seq", BigInteger, nullable=False),
)

# Current voting power per delegatee (Σ staked of the participants delegating to it); the row is also the lock
# that serialises changes to its checkpoint history.
staking_delegates = Table(
    "staking_delegates",
    metadata,
    Column("delegatee_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("votes", BigInteger, nullable=False),
    Column("updated_seq", BigInteger, nullable=False),
)

# Append-only ERC20Votes checkpoints: the value from timepoint_ms on (ledger clock); several in one ms are kept
# and the one with the highest event_seq (the journal event that made it) wins. The primary key is the lookup
# index of get_past_votes: (delegatee, timepoint) → the last row at or before it.
staking_vote_checkpoints = Table(
    "staking_vote_checkpoints",
    metadata,
    Column("delegatee_id", String(40), primary_key=True),
    Column("timepoint_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("event_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("votes", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

staking_supply_checkpoints = Table(
    "staking_supply_checkpoints",
    metadata,
    Column("timepoint_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("event_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("supply", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# governance: proposals, votes and lifecycle marks, all append-only. A proposal's state is derived from the clock
# and these rows (royalty.ledger.governance), never stored as a mutable status.
gov_proposals = Table(
    "gov_proposals",
    metadata,
    Column("id", String(24), primary_key=True),  # "prop_" + 16 hex digits
    Column("proposer_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("description", Text, nullable=False),
    Column("description_hash", String(64), nullable=False),
    Column("actions_json", Text, nullable=False),  # canonical JSON of the normalised actions
    Column("threshold", BigInteger, nullable=False),  # the proposal threshold in force when proposed
    Column("created_ms", BigInteger, nullable=False),
    Column("snapshot_ms", BigInteger, nullable=False),
    Column("deadline_ms", BigInteger, nullable=False),
    Column("created_seq", BigInteger, nullable=False),  # the gov.propose journal event
    Index("ix_gov_proposals_order", "created_seq", unique=True),
)

# One vote per (proposal, voter): the primary key refuses a second one.
gov_votes = Table(
    "gov_votes",
    metadata,
    Column("proposal_id", String(24), ForeignKey("gov_proposals.id"), primary_key=True),
    Column("voter_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("support", SmallInteger, nullable=False),  # 0 against, 1 for, 2 abstain
    Column("weight", BigInteger, nullable=False),  # get_past_votes(voter, snapshot)
    Column("reason", Text, nullable=True),
    Column("cast_ms", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),  # the gov.vote journal event
)

# At most one row per (proposal, kind): kind is queued | executed | canceled. eta_ms and expires_ms (eta + the
# grace period in force when queued) only on queued rows.
gov_transitions = Table(
    "gov_transitions",
    metadata,
    Column("proposal_id", String(24), ForeignKey("gov_proposals.id"), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("actor_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("eta_ms", BigInteger, nullable=True),
    Column("expires_ms", BigInteger, nullable=True),
    Column("seq", BigInteger, nullable=False),  # the gov.queue / gov.execute / gov.cancel journal event
)

APPEND_ONLY_STAKING_GOVERNANCE: tuple[str, ...] = (
    "staking_vote_checkpoints",
    "staking_supply_checkpoints",
    "gov_proposals",
    "gov_votes",
    "gov_transitions",
)

# --- fees and reward epochs (royalty.ledger.fees, royalty.ledger.rewards; migration 0006) ----------------------
# One row per settled inference fee: who paid what for which receipt and adapter, and how it was split. The legs'
# transfer ids are derived from request_id, so the rows and the ledger can be checked against each other (audit).
# params_seq: the ledger_params version whose split was applied; fingerprint: SHA-256 of the settle call's
# arguments, so a retry with different arguments is refused instead of answered with the first outcome.
fee_settlements = Table(
    "fee_settlements",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("receipt_id", String(128), nullable=True),
    Column("adapter_id", String(128), nullable=True),
    Column("payer_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("owner_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("treasury", BigInteger, nullable=False),
    Column("owner_amount", BigInteger, nullable=False),
    Column("stakers", BigInteger, nullable=False),
    Column("contributors", BigInteger, nullable=False),
    Column("dust", BigInteger, nullable=False),
    Column("params_seq", BigInteger, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("settled_ms", BigInteger, nullable=False),
    Column("event_seq", BigInteger, nullable=False),
)

# The participants a settlement paid: the adapter owner (role 'owner') and every contributor with a weight > 0
# (role 'contributor'; amount 0 and no transfer when the floor share rounds to nothing). ``earnings`` reads these.
fee_settlement_legs = Table(
    "fee_settlement_legs",
    metadata,
    Column("request_id", String(128), ForeignKey("fee_settlements.request_id"), primary_key=True),
    Column("role", String(16), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("weight", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("transfer_id", String(32), nullable=True),
    Column("event_seq", BigInteger, nullable=False),
    Index("ix_fee_settlement_legs_account", "account_id", "event_seq"),
)

# Reward epochs: open (being funded) → frozen (weights fixed, weights_root journaled) → distributed. The only
# table of this section whose rows change, and only forward (a trigger refuses changes to a distributed epoch
# and every DELETE).
reward_epochs = Table(
    "reward_epochs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("state", String(12), nullable=False),  # open | frozen | distributed
    Column("created_ms", BigInteger, nullable=False),
    Column("created_seq", BigInteger, nullable=False),
    Column("funded", BigInteger, nullable=True),  # fixed at freeze: the pool's balance then
    Column("total_weight", BigInteger, nullable=True),
    Column("weights_root", LargeBinary(32), nullable=True),
    Column("frozen_ms", BigInteger, nullable=True),
    Column("frozen_seq", BigInteger, nullable=True),
    Column("paid", BigInteger, nullable=True),
    Column("dust", BigInteger, nullable=True),
    Column("distributed_ms", BigInteger, nullable=True),
    Column("distributed_seq", BigInteger, nullable=True),
)

reward_epoch_fundings = Table(
    "reward_epoch_fundings",
    metadata,
    Column("transfer_id", String(32), primary_key=True),
    Column("epoch_id", String(40), ForeignKey("reward_epochs.id"), nullable=False, index=True),
    Column("source", String(16), nullable=False),  # reward_pool | dust | treasury
    Column("amount", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("event_seq", BigInteger, nullable=False),
)

# The frozen weights; position = leaf index in the weights tree (accounts in ascending id order).
reward_epoch_weights = Table(
    "reward_epoch_weights",
    metadata,
    Column("epoch_id", String(40), ForeignKey("reward_epochs.id"), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("weight", BigInteger, nullable=False),
)

reward_epoch_payouts = Table(
    "reward_epoch_payouts",
    metadata,
    Column("epoch_id", String(40), ForeignKey("reward_epochs.id"), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("weight", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("transfer_id", String(32), nullable=True),  # NULL when the floor share is 0
    Column("event_seq", BigInteger, nullable=False),
    Index("ix_reward_epoch_payouts_account", "account_id", "event_seq"),
)

APPEND_ONLY_FEES_REWARDS: tuple[str, ...] = (
    "fee_settlements",
    "fee_settlement_legs",
    "reward_epoch_fundings",
    "reward_epoch_weights",
    "reward_epoch_payouts",
)

# Tables whose rows may never change or disappear (enforced by triggers in the migrations).
APPEND_ONLY = APPEND_ONLY_STAKING_GOVERNANCE + APPEND_ONLY_FEES_REWARDS + (
    "journal_events",
    "journal_nodes",
    "journal_checkpoints",
    "datanet_versions",
    "datanet_version_members",
    "datanet_version_blocks",
    "datanet_version_nodes",
    "ledger_transfers",
    "ledger_failures",
    "ledger_params",
)

# --- ModelFactory: adapters and jobs (royalty.factory; migration 0008) -------------------------------------------
# One row per registered adapter version: its files live in ``path`` (<home>/adapters/<name>/v<version>/),
# ``manifest`` is the text of its royalty.json and ``manifest_sha256`` the SHA-256 of that text (journaled by the
# adapter.registered event ``event_seq``). status: registered | published | deprecated; rows are never deleted
# and a deprecated row never changes again (triggers). Prices are base units per 1,000 tokens.
adapters = Table(
    "adapters",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("owner_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("base_model", Text, nullable=False),
    Column("base_weights_sha256", String(64), nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("manifest", Text, nullable=False),
    Column("price_in_per_1k", BigInteger, nullable=False),
    Column("price_out_per_1k", BigInteger, nullable=False),
    Column("path", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("event_seq", BigInteger, nullable=False),
    Column("parent_id", String(40), ForeignKey("adapters.id"), nullable=True),  # lineage: "continue" runs
    Index("ix_adapters_name_version", "name", "version", unique=True),
)

# Background work (royalty.factory.jobs): queued → running → succeeded | failed | canceled. A worker claims a
# queued row, refreshes heartbeat_ms while it runs, and writes result (JSON) or error (one line) at the end.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("payload", Text, nullable=False),  # JSON object, the kind's input
    Column("actor", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("started_ms", BigInteger, nullable=True),
    Column("finished_ms", BigInteger, nullable=True),
    Column("heartbeat_ms", BigInteger, nullable=True),
    Column("worker", String(128), nullable=True),  # "host:pid" of the claiming worker
    Column("cancel_requested", Boolean, nullable=False),
    Column("result", Text, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_jobs_queue", "status", "created_ms"),
)

# A job's progress events, seq 0, 1, 2, ... per job; append-only so a client that reconnects replays exactly what
# it missed (``royalty jobs logs ID --after SEQ``).
job_events = Table(
    "job_events",
    metadata,
    Column("job_id", String(40), ForeignKey("jobs.id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", Text, nullable=False),  # JSON object
)

APPEND_ONLY_FACTORY: tuple[str, ...] = ("job_events",)
APPEND_ONLY = APPEND_ONLY + APPEND_ONLY_FACTORY
