"""Errors of the backup domain, with messages that are safe to show and say what to fix.

Driver and SDK errors are translated here once, so every caller gets the same wording: a refused credential
names the setting it came from and is never worth a retry; anything else that may pass (a refused
connection, a server starting up, an unreachable endpoint) is marked `transient`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hotpot_orchestration.platform.pg import PgTarget


class BackupError(RuntimeError):
    """A backup could not be taken, checked or pruned. The message holds no secret."""

    transient = False


class TransientBackupError(BackupError):
    """Worth another attempt later: the service was unreachable or busy."""

    transient = True


class CredentialsRefused(BackupError):
    """A service refused the configured credentials: retrying cannot help."""


# Connection failures that may pass on their own (lower-case fragments of libpq and server messages).
_TRANSIENT_LOGIN = (
    "connection refused",
    "could not connect",
    "timeout expired",
    "the database system is starting up",
    "the database system is shutting down",
    "too many clients",
    "remaining connection slots",
    "server closed the connection",
    "could not translate host name",
)


def database_error(message: str, target: PgTarget, url_variable: str) -> BackupError:
    """Classify a libpq error text (from psycopg or a client program's stderr)."""
    text = target.redact(message).strip()
    lowered = text.lower()
    where = target.display
    if "password authentication failed" in lowered:
        return CredentialsRefused(f"{url_variable}'s password was refused by {where} ({text})")
    if "no password supplied" in lowered:
        return CredentialsRefused(f"{url_variable} has no password but {where} requires one")
    if f'role "{target.user.lower()}" does not exist' in lowered:
        return CredentialsRefused(f"{url_variable}'s user does not exist on {where}")
    if "no pg_hba.conf entry" in lowered:
        return CredentialsRefused(f"{where} does not accept this host for {url_variable}'s user ({text})")
    if any(fragment in lowered for fragment in _TRANSIENT_LOGIN):
        return TransientBackupError(f"cannot reach {where} ({url_variable}): {text}")
    return BackupError(f"{where} ({url_variable}): {text}")


# S3 error codes that mean "these keys are not accepted", as opposed to "not allowed to do this".
_S3_REFUSED_KEYS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
# 4xx codes that the next attempt may not meet: throttling, and bytes damaged on the way (S3 checked the
# part's checksum against what arrived).
_S3_TRANSIENT = {"SlowDown", "RequestTimeout", "BadDigest", "XAmzContentSHA256Mismatch", "IncompleteBody"}


@contextlib.contextmanager
def s3_errors(endpoint: str, action: str) -> Iterator[None]:
    """Translate botocore failures of `action` (after botocore's own retries) into BackupErrors."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise s3_error(error, endpoint, action) from None


def s3_error(error: BaseException, endpoint: str, action: str) -> BackupError:
    translated = _translate(error, endpoint, action)
    # Notes added on the way up (e.g. that aborting an upload failed too) belong in the message.
    notes = getattr(error, "__notes__", [])
    return type(translated)(" ".join([str(translated), *notes])) if notes else translated


def _translate(error: BaseException, endpoint: str, action: str) -> BackupError:
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return CredentialsRefused(
            "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or "
            f"role) for S3 at {endpoint}"
        )
    if isinstance(error, (ConnectionError, HTTPClientError)):
        return TransientBackupError(
            f"S3 at {endpoint} is unreachable (after retries) while {action}: {error}"
        )
    if not isinstance(error, ClientError):
        return BackupError(f"S3 at {endpoint} failed while {action}: {error}")
    code = error.response.get("Error", {}).get("Code", "")
    detail = error.response.get("Error", {}).get("Message", "") or code
    if code in _S3_REFUSED_KEYS:
        return CredentialsRefused(
            f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY refused by S3 at {endpoint} ({code}) while {action}"
        )
    if code in ("AccessDenied", "AllAccessDisabled"):
        return CredentialsRefused(
            f"S3 at {endpoint} accepted the AWS credentials but denied {action}: grant that permission "
            f"({detail})"
        )
    if code in ("NoSuchBucket", "404"):
        return BackupError(f"the bucket does not exist at {endpoint} ({action})")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    kind = TransientBackupError if status >= 500 or code in _S3_TRANSIENT else BackupError
    return kind(f"S3 at {endpoint} failed while {action}: {code}: {detail}")
