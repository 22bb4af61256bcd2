"""Why a restore could not be carried out. Each message says what to change; none of them is a finding
about the backup itself (those are differences in the restore's report)."""

# How long a DROP or RENAME of a database waits for another session's lock unless told otherwise; past it,
# DatabaseLocked names the holders.
DEFAULT_LOCK_TIMEOUT_SECONDS = 60


class RestoreError(Exception):
    """A restore cannot proceed as configured."""


class NoBackup(RestoreError, LookupError):
    """No backup matches what was asked for; the message says what exists."""


class RestoreRefused(RestoreError):
    """restore_database_job will not touch the target as configured; the message says what to pass."""


class RestoreSetupError(RestoreError):
    """The binaries, roles or privileges on the restore server do not allow the restore."""


class DatabaseLocked(RestoreError):
    """Another session held a lock on a database to drop or rename past the lock timeout; the message names
    the holders."""


class NotEnoughSpace(RestoreSetupError):
    """The download directory cannot hold the dump; the message names it and the bytes needed and free."""
