"""Build or upgrade the database schema with the Alembic migrations in ``migrations/``.

Tests and production both call :func:`upgrade_database`, so the schema a test sees is the
schema a deployment gets.
"""

from __future__ import annotations

from importlib import util as import_util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.config import get_settings
from app.db import make_engine, normalise_database_url


def migrations_directory() -> Path:
    """The folder holding env.py and versions/: beside the app package, or the installed package."""
    beside_package = Path(__file__).resolve().parent.parent / "migrations"
    if (beside_package / "env.py").is_file():
        return beside_package
    installed = import_util.find_spec("migrations")
    if installed is not None and installed.submodule_search_locations:
        for location in installed.submodule_search_locations:
            if (Path(location) / "env.py").is_file():
                return Path(location)
    raise FileNotFoundError("the Alembic migrations folder (migrations/env.py) was not found")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the URL (default: the configured database), without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    # Passed as an attribute, not a main option, because ConfigParser would treat '%' in passwords specially.
    config.attributes["database_url"] = normalise_database_url(url or get_settings().database_url)
    return config


def upgrade_database(url: str | None = None) -> None:
    """Create or upgrade every table to the newest revision."""
    command.upgrade(alembic_config(url), "head")


def head_revision() -> str | None:
    """The newest revision of the migrations folder."""
    return ScriptDirectory(str(migrations_directory())).get_current_head()


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    engine = make_engine(normalise_database_url(url or get_settings().database_url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
