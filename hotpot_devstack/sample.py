"""Sample restaurant database for `make dev` and tests: something real to back up and restore."""

from __future__ import annotations

from importlib.resources import files

from .postgres import Postgres

SAMPLE_DATABASE = "thehotpotspot"


def seed_sample(postgres: Postgres, dbname: str = SAMPLE_DATABASE) -> None:
    """Create database `dbname` on `postgres` and load the sample schema and rows (one transaction)."""
    postgres.create_database(dbname)
    script = files(__package__).joinpath("sample.sql").read_text()
    with postgres.connect(dbname) as conn, conn.transaction():
        conn.execute(script)
