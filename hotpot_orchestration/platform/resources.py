"""Dagster resources shared by every concern. Secrets reach them only through `EnvVar`."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from hotpot_orchestration.platform.pg import PgTarget, find_pg_bin_dir
from hotpot_orchestration.settings import DEFAULTS


class PostgresResource(dg.ConfigurableResource):
    """A PostgreSQL database named by a libpq URL (HOTPOT_DATABASE_URL or HOTPOT_DRILL_DATABASE_URL)."""

    url: str = Field(description="libpq URL; fed from an environment variable, never typed into run config")
    pg_bin_dir: str | None = Field(default=None, description="where pg_dump and pg_restore live")

    @property
    def target(self) -> PgTarget:
        return PgTarget.from_url(self.url)

    def bin_dir(self) -> Path:
        return find_pg_bin_dir(self.pg_bin_dir)


class BackupStorageResource(dg.ConfigurableResource):
    """The S3 bucket and prefix that hold backups. Credentials come from boto3's own chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile or an IAM role), never from Dagster config."""

    bucket: str
    prefix: str = DEFAULTS.backup_prefix
    endpoint_url: str | None = None
    region: str = DEFAULTS.aws_region
    kms_key_id: str | None = Field(default=None, description="SSE-KMS key; AES256 when unset")
    database: str = Field(
        default="",
        description="the database whose backup the release gate asks for: HOTPOT_DATABASE_URL's, by name "
        "only (a release needs no database credentials)",
    )
    max_attempts: int = Field(
        default=8, ge=1, le=20, description="attempts of each S3 request (the first one included)"
    )

    def client(self):
        import boto3  # lazy: keeps the code location's load light
        from botocore.config import Config

        config = Config(
            # botocore's `max_attempts` counts retries, `total_max_attempts` the attempts.
            retries={"mode": "adaptive", "total_max_attempts": self.max_attempts},
            connect_timeout=10,
            read_timeout=120,
            tcp_keepalive=True,
        )
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)

    def encryption_args(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}


class LockedResource(dg.ResourceDefinition):
    """`resource` with the values the code location loaded it with: run config cannot change them.

    Dagster lets launch-time run config override any field of a ConfigurableResource, so anyone who can
    launch a run could otherwise point it at another checkout, builder binary, bucket or database. Here
    the config schema is empty (an override is refused as an unexpected entry); fields bound to an EnvVar
    are still read from the environment when a run uses the resource, so secrets stay out of run config.
    """

    def __init__(self, resource: dg.ConfigurableResource) -> None:
        # The run's own config is mapped to the values loaded here; Dagster then resolves their EnvVars
        # and initializes the resource with the run's context, as for any resource.
        locked = resource.get_resource_definition().configured(
            lambda _empty: resource._convert_to_config_dictionary(),  # noqa: SLF001 (EnvVars as env sources)
            config_schema={},
        )
        super().__init__(
            resource_fn=locked.resource_fn,
            config_schema=locked.config_schema,
            description=type(resource).__doc__,
        )
        self.resource = resource
