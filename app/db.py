"""Engine, sessions and the declarative Base with a constraint naming convention."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import MetaData, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.config import Settings, default_pool_size, get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str | None = None, *, settings: Settings | None = None) -> Engine:
    """Create an engine; SQLite gets WAL, ``synchronous`` from the settings, a busy timeout and enforced foreign keys.

    The pool (both kinds) is sized by the settings database_pool_size (default by kind, see
    app.config.default_pool_size), database_max_overflow and database_pool_timeout; a request that
    waits longer than the timeout for a connection raises sqlalchemy.exc.TimeoutError, which the API
    answers 503 with Retry-After.
    """
    settings = settings or get_settings()
    database_url = normalise_database_url(url or settings.database_url)
    pool = {
        "pool_size": settings.database_pool_size or default_pool_size(database_url),
        "max_overflow": settings.database_max_overflow,
        "pool_timeout": settings.database_pool_timeout,
    }
    if database_url.startswith("sqlite:///:memory:") or database_url in ("sqlite://", "sqlite:///"):
        # One in-memory database per connection: a pool of them would be many databases (SQLAlchemy's default).
        pool = {}
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 30, "check_same_thread": False}, **pool)
        # In WAL mode 'normal' keeps the database consistent and skips the fsync of every commit, which costs
        # 0.5-12 ms on a busy disk: a stack's per-epoch write was mostly that (bench/RESULTS.md, issue 16 item 6).
        synchronous = settings.sqlite_synchronous.upper()

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True, **pool)


@lru_cache(maxsize=4)
def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for a URL (default: the configured one)."""
    return make_engine(url)


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    """A sessionmaker bound to the engine."""
    return sessionmaker(bind=engine or get_engine(), expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def upsert(session: Session, table: Table, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE of ``rows`` in the session's dialect (PostgreSQL or SQLite)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:
        raise NotImplementedError(f"upserts support postgresql and sqlite, not {dialect}")
    updated = {name: statement.excluded[name] for name in rows[0] if name not in keys}
    session.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=updated), rows)
