"""Sample restaurant database for `make dev` and tests: something real to back up and restore.

`small` (sample.sql, a few hundred rows) is what the tests seed: fast, and every row is known. `year` adds a
restaurant's year of orders (sample_year.sql, about 1.3 million order lines, ~150 MB on disk), so that
`make dev`'s backups, drills and plots show realistic sizes and rates. Generating it takes SQL 20 s or so;
the first stack keeps a custom-format dump of it in the cache and later stacks restore that (a few seconds).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from importlib.resources import files

from ._process import ServiceError
from .postgres import Postgres
from .sample_api import cache_dir

SAMPLE_DATABASE = "thehotpotspot"
SAMPLE_SIZES = ("small", "year")


def _script(name: str) -> str:
    return files(__package__).joinpath(name).read_text()


def seed_sample(postgres: Postgres, dbname: str = SAMPLE_DATABASE, size: str = "small") -> None:
    """Create database `dbname` on `postgres` with the sample schema and the rows of `size`."""
    if size not in SAMPLE_SIZES:
        raise ValueError(f"sample size {size!r}: expected one of {', '.join(SAMPLE_SIZES)}")
    if size == "year":
        _seed_year(postgres, dbname)
        return
    postgres.create_database(dbname)
    with postgres.connect(dbname) as conn, conn.transaction():
        conn.execute(_script("sample.sql"))


def _seed_year(postgres: Postgres, dbname: str) -> None:
    scripts = [_script("sample.sql"), _script("sample_year.sql")]
    digest = hashlib.sha256("\0".join(scripts).encode()).hexdigest()[:16]
    cached = cache_dir() / f"sample-year-{digest}-pg{postgres.version}.dump"
    postgres.create_database(dbname)
    url = postgres.url_for(dbname)
    if cached.exists():
        # --no-owner: the dump was taken as another stack's superuser name (the same name, but be explicit).
        _run(
            [
                str(postgres.bin_dir / "pg_restore"),
                "--no-owner",
                "--exit-on-error",
                "-j",
                "2",
                "-d",
                url,
                str(cached),
            ]
        )
        return
    with postgres.connect(dbname) as conn, conn.transaction():
        for script in scripts:
            conn.execute(script)
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Written beside its final name and renamed: two stacks starting at once never read half a dump.
    fd, partial = tempfile.mkstemp(dir=cached.parent, prefix=".sample-year-", suffix=".partial")
    os.close(fd)
    try:
        _run([str(postgres.bin_dir / "pg_dump"), "-Fc", "-Z", "1", "-f", partial, url])
        os.replace(partial, cached)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        # argv[-1] or [-2] holds the URL with the password: name the program only.
        raise ServiceError(
            f"{os.path.basename(argv[0])} failed seeding the sample year:\n{result.stderr[-2000:]}"
        )
