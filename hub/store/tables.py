"""The database schema, as SQLModel tables.

Times are stored as naive UTC `DateTime`s so that SQLite (text) and PostgreSQL
(`timestamp`) compare and sort them the same way. Resource JSON is stored as text
exactly as it will be served; it is never re-serialised through a model.

Search-index tables hold the values that searches use, one row per value, for
the CURRENT version of each resource only. They carry `domain`, `rtype` and
`param` so one composite index answers "Task.status = completed in domain d".
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

# SQLite only auto-increments an `INTEGER PRIMARY KEY`; PostgreSQL wants a bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")
_BYTE_ORDER_TEXT = Text().with_variant(Text(collation="C"), "postgresql")


def _pk() -> int | None:
    pk: int | None = Field(
        default=None, sa_column_kwargs={"autoincrement": True}, primary_key=True, sa_type=BigId
    )
    return pk


def _time(*, index: bool = False, nullable: bool = False) -> datetime:
    return Field(sa_type=DateTime(), index=index, nullable=nullable)  # type: ignore[no-any-return]


class StoredResource(SQLModel, table=True):
    """The current version of every resource (deleted ones stay, marked `deleted`)."""

    __tablename__ = "resources"
    __table_args__ = (
        UniqueConstraint("domain", "rtype", "id", name="uq_resources_identity"),
        Index("ix_resources_type_updated", "domain", "rtype", "last_updated"),
        Index("ix_resources_type_origin", "domain", "rtype", "origin"),
        # Search pages through one type in `pk` order (keyset paging).
        Index("ix_resources_type_pk", "domain", "rtype", "pk"),
    )

    pk: int | None = _pk()
    domain: str = Field(max_length=64)
    rtype: str = Field(max_length=64)
    id: str = Field(max_length=64)
    version_id: int
    last_updated: datetime = _time()
    deleted: bool = False
    # The Device id of the resource-origin extension, for narrowing searches in SQL.
    origin: str | None = Field(default=None, max_length=64)
    content: str = Field(sa_column=Column(Text, nullable=False))


class ResourceVersion(SQLModel, table=True):
    """Every version of every resource, including deletions (`content` = last live JSON)."""

    __tablename__ = "resource_versions"

    resource_pk: int = Field(primary_key=True, sa_type=BigId)
    version_id: int = Field(primary_key=True)
    last_updated: datetime = _time()
    deleted: bool = False
    method: str = Field(max_length=8)
    content: str = Field(sa_column=Column(Text, nullable=False))


class _IndexRow(SQLModel):
    pk: int | None = _pk()
    resource_pk: int = Field(sa_type=BigId, index=True)
    domain: str = Field(max_length=64)
    rtype: str = Field(max_length=64)
    param: str = Field(max_length=64)


class TokenIndex(_IndexRow, table=True):
    """token parameters: `system|code`, plus the display text (normalised) for `:text`."""

    __tablename__ = "idx_token"
    __table_args__ = (Index("ix_idx_token_lookup", "domain", "rtype", "param", "code", "system"),)

    system: str | None = Field(default=None, max_length=512)
    code: str | None = Field(default=None, max_length=512)
    text: str | None = Field(default=None, sa_column=Column(Text))


class StringIndex(_IndexRow, table=True):
    """string parameters: `norm` is lower-cased without accents (default and :contains)."""

    __tablename__ = "idx_string"
    __table_args__ = (Index("ix_idx_string_lookup", "domain", "rtype", "param", "norm"),)

    # Byte-order collation on PostgreSQL (SQLite's default already is), so the prefix
    # search `norm >= p AND norm < p_next` is exact and uses the index.
    norm: str = Field(sa_column=Column(_BYTE_ORDER_TEXT, nullable=False))
    exact: str = Field(sa_column=Column(Text, nullable=False))


class ReferenceIndex(_IndexRow, table=True):
    """reference parameters: local `Type/id` references, or `url` for absolute/canonical ones."""

    __tablename__ = "idx_reference"
    __table_args__ = (
        Index("ix_idx_reference_lookup", "domain", "rtype", "param", "ref_id", "ref_type"),
        Index("ix_idx_reference_url", "domain", "rtype", "param", "url"),
    )

    ref_type: str | None = Field(default=None, max_length=64)
    ref_id: str | None = Field(default=None, max_length=64)
    url: str | None = Field(default=None, max_length=1024)


class DateIndex(_IndexRow, table=True):
    """date parameters as the closed-open range [low, high) the value covers, in UTC."""

    __tablename__ = "idx_date"
    __table_args__ = (
        Index("ix_idx_date_low", "domain", "rtype", "param", "low"),
        Index("ix_idx_date_high", "domain", "rtype", "param", "high"),
    )

    low: datetime = _time()
    high: datetime = _time()


class UriIndex(_IndexRow, table=True):
    __tablename__ = "idx_uri"
    __table_args__ = (Index("ix_idx_uri_lookup", "domain", "rtype", "param", "value"),)

    value: str = Field(max_length=1024)


class UsedAssertion(SQLModel, table=True):
    """`jti`s of client assertions already accepted, kept until the assertion expires.

    Stored in the database (not in memory) so a replay is refused by every process.
    """

    __tablename__ = "used_assertions"

    domain: str = Field(primary_key=True, max_length=64)
    client_id: str = Field(primary_key=True, max_length=128)
    jti: str = Field(primary_key=True, max_length=256)
    expires_at: datetime = _time(index=True)


class AuditChainLink(SQLModel, table=True):
    """One AuditEvent's place in its domain's hash chain (tamper evidence).

    `digest` = HMAC(chain key, previous digest + the event's stored JSON), so an
    edited, removed or reordered event breaks the chain from that point on.
    """

    __tablename__ = "audit_chain"

    domain: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    resource_pk: int = Field(sa_type=BigId, index=True)
    digest: str = Field(max_length=64)


class AuditChainHead(SQLModel, table=True):
    """The newest link of a domain's chain; its row lock serialises appends."""

    __tablename__ = "audit_chain_heads"

    domain: str = Field(primary_key=True, max_length=64)
    seq: int = Field(sa_type=BigInteger)
    digest: str = Field(max_length=64)


class OutboxRow(SQLModel, table=True):
    """One notification to deliver: written in the transaction of the write that caused it.

    `channel` is `rest-hook` (a Subscription's webhook) or `email` (a patient
    notice). A row is claimed with a lease (`lease_owner`, `lease_until`), so a
    dead process's rows come back to the others when the lease runs out.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "state", "next_attempt_at"),
        Index("ix_outbox_coalesce", "subscription_id", "resource_type", "resource_id", "state"),
    )

    pk: int | None = _pk()
    domain: str = Field(max_length=64)
    channel: str = Field(max_length=16)
    subscription_id: str | None = Field(default=None, max_length=64)
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    version_id: int
    source_device: str | None = Field(default=None, max_length=128)
    request_id: str = Field(max_length=64)
    trace_id: str = Field(max_length=64)
    recipient: str | None = Field(default=None, max_length=320)
    kind: str | None = Field(default=None, max_length=32)
    state: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _time()
    first_attempt_at: datetime | None = _time(nullable=True)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _time(nullable=True)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _time()
    # The resource's resource-origin Device: what the pre-send check of the
    # subscriber's right to read needs, so that check reads nothing.
    origin: str | None = Field(default=None, max_length=64)


class SubscriptionGeneration(SQLModel, table=True):
    """Re-stamped with a random value by every Subscription change of a domain, in its transaction.

    Each process keeps an in-memory index of live Subscriptions and compares its
    generation with this row inside every write transaction, so a write never
    matches against a stale index, whichever process changed the Subscription.
    """

    __tablename__ = "subscription_generations"

    domain: str = Field(primary_key=True, max_length=64)
    generation: int = Field(default=0, sa_type=BigInteger)


class DeliveryHealth(SQLModel, table=True):
    """Consecutive delivery failures of a Subscription (3 in a row → status `error`)."""

    __tablename__ = "delivery_health"

    domain: str = Field(primary_key=True, max_length=64)
    subscription_id: str = Field(primary_key=True, max_length=64)
    consecutive_failures: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text))
