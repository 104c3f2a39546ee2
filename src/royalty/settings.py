"""Settings: where a node lives and how it reaches its database.

Precedence, highest first: explicit arguments, ``ROYALTY_*`` environment variables, the home's ``node.json``
(written by ``royalty init``), then the defaults below. The home defaults to ``$ROYALTY_HOME``, then
``./.royalty``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import InvalidInput

DEFAULT_HOME = ".royalty"
SUPPORTED_SCHEMES = ("sqlite", "postgresql")


def default_home() -> Path:
    """``$ROYALTY_HOME`` if set, else ``./.royalty``."""
    return Path(os.environ.get("ROYALTY_HOME") or DEFAULT_HOME)


class Settings(BaseSettings):
    """Node settings. Validated once; every field has help text (shown in docs/ARCHITECTURE.md)."""

    model_config = SettingsConfigDict(env_prefix="ROYALTY_", extra="ignore", frozen=True)

    home: Path = Field(default_factory=default_home, description="The node's home directory.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store. Unset: SQLite at HOME/royalty.db. "
        "PostgreSQL: postgresql://user@host/db (psycopg 3 is used).",
    )
    sqlite_busy_timeout_ms: int = Field(
        default=10_000, ge=0, description="How long a SQLite writer waits for the write lock before failing."
    )

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in SUPPORTED_SCHEMES:
            raise ValueError(f"unsupported database {scheme!r}: use sqlite:///PATH or postgresql://...")
        return value

    def resolved_database_url(self) -> str:
        """The URL actually used, with the psycopg 3 driver made explicit for PostgreSQL."""
        url = self.database_url or f"sqlite:///{(self.home / 'royalty.db').resolve()}"
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url


def load_settings(home: str | Path | None = None, database_url: str | None = None) -> Settings:
    """Build Settings, turning validation problems into one InvalidInput naming every bad field."""
    overrides: dict[str, object] = {}
    if home is not None:
        overrides["home"] = Path(home)
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        errors = getattr(exc, "errors", lambda: [])()
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors] or [str(exc)]
        raise InvalidInput("invalid settings: " + "; ".join(parts), field=str(errors[0]["loc"][0]) if errors else None) from None
