"""Every environment variable of the design, read and validated in one place: the `Settings` model.

`load_settings()` runs when the code location loads, so a malformed value stops the load with a message
that names the variable and the form it accepts, instead of failing a run hours later; every bad value is
reported at once. Values that carry secrets (database URLs, the registry password, the webhook URL) are
`SecretStr`: validated here, never echoed back in an error or a repr, and passed to resources only through
`EnvVar`. AWS credentials are left to boto3's own chain.

Resources take their non-secret values from these settings, and fall back on `DEFAULTS` (the values of
unset variables) rather than on defaults of their own.

A plain pydantic model validated from a mapping, not pydantic-settings' `BaseSettings`: `load_settings`
validates any environment it is given (tests, the local stack's env) without reading `os.environ` itself,
a blank value means unset, and lists are comma-separated rather than the JSON `BaseSettings` decodes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_args
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

ROUTERS = ("nginx", "ingress-nginx", "gateway-api")
IMAGE_BUILDERS = ("buildah", "docker", "kaniko")
# Who takes base backups and recovers drills: barman-cloud here, or a CloudNativePG cluster's operator.
PITR_DRIVERS = ("barman-cloud", "cloudnativepg")


class SettingsError(ValueError):
    """One or more environment variables have values the project cannot use."""


def _postgres_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.path.strip("/"):
        raise ValueError("a libpq URL: postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME")
    _ = parts.port  # raises ValueError on a non-numeric port
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http(s) URL such as http://127.0.0.1:9090")
    _ = parts.port
    return value.rstrip("/")


def _registry(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", value):
        raise ValueError("HOST[:PORT] without a scheme, such as registry.example.com or 127.0.0.1:5000")
    return value


def _repository(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", value):
        raise ValueError("a lowercase repository path such as thehotpotspot/api")
    return value


def _bucket(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value) or ".." in value:
        raise ValueError("an S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens")
    return value


def _prefix(value: str) -> str:
    value = value.lstrip("/")
    if value and not value.endswith("/"):
        value += "/"
    return value


def _whole_number(low: int, high: int):
    """A parser of whole numbers from `low` to `high`. Every number has an upper bound, so a slip such as
    1000000 is refused at load instead of overflowing date arithmetic in a run hours later."""

    def parse(value: str) -> int:
        value = value.strip()
        if not re.fullmatch(r"[0-9]{1,18}", value) or not low <= int(value) <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return int(value)

    return parse


_COMPRESSION_LEVELS = {"gzip": range(1, 10), "zstd": range(1, 23)}


def _compression(value: str) -> str:
    method, _, level = value.strip().partition(":")
    levels = _COMPRESSION_LEVELS.get(method)
    if levels is None or (level and not (level.isdigit() and int(level) in levels)):
        raise ValueError("gzip or zstd, optionally with a level: gzip:1 to gzip:9, zstd:1 to zstd:22")
    return value.strip()


def _server_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", value):
        raise ValueError("a barman server name: up to 63 letters, digits, '.', '_', '-', such as hotpot-db")
    return value


def _one_of(choices: tuple[str, ...]):
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return value

    return check


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("an IANA time zone name such as UTC or Europe/Moscow") from None
    return value


def _cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*/,-]+", field) for field in fields):
        raise ValueError("a five-field cron expression such as '0 4 * * *'")
    return " ".join(fields)


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise ValueError("true or false")
    return lowered == "true"


def _readable_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ValueError("a readable file, such as /etc/hotpot/rollout-plan/rollout_plan.yaml")
    return path


def _directory(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError("an existing directory")
    return path


def _writable_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ValueError("a file path in an existing, writable directory")
    return path


def _absolute_path(value: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        raise ValueError("an absolute path such as /run/nginx.pid")
    return path


def _upstream_conf(value: str) -> Path:
    path = Path(value)
    if not path.is_absolute() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ValueError(
            "an absolute file path in an existing, writable directory, such as "
            "/etc/nginx/conf.d/hotpot-upstream.conf"
        )
    return path


def _nginx_command(value: str) -> tuple[str, ...]:
    form = (
        "a command line starting with the nginx program, such as '/usr/sbin/nginx -c /etc/nginx/nginx.conf'"
    )
    try:
        argv = shlex.split(value)
    except ValueError:
        raise ValueError(f"{form} (quoted as in a shell)") from None
    if shutil.which(argv[0]) is None:
        raise ValueError(f"{form}; {argv[0]!r} is not an executable program")
    return tuple(argv)


_SERVER = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


def _servers(value: str) -> tuple[str, ...]:
    servers = tuple(part.strip() for part in value.split(","))
    if not all((match := _SERVER.fullmatch(server)) and 0 < int(match["port"]) < 65536 for server in servers):
        raise ValueError("a comma-separated list of HOST:PORT, such as 10.0.0.11:8080,10.0.0.12:8080")
    return servers


def _dns_label(value: str) -> str:
    if len(value) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value):
        raise ValueError("a namespace name (DNS-1123 label): up to 63 lowercase letters, digits and '-'")
    return value


def _dns_subdomain(value: str) -> str:
    label = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
    if len(value) > 253 or not re.fullmatch(rf"{label}(\.{label})*", value):
        raise ValueError("a Kubernetes object name (DNS-1123 subdomain) such as hotpot-registry-push")
    return value


def _pg_bin_dir(value: str) -> Path:
    path = _directory(value)
    if not (path / "pg_dump").is_file():
        raise ValueError("a directory that contains pg_dump and pg_restore")
    return path


def _app_source(value: str) -> Path:
    path = _directory(value)
    if not (path / "Dockerfile").is_file():
        raise ValueError("a source checkout with a Dockerfile at its top")
    return path


def _database_name(url: SecretStr | None) -> str:
    """The database a libpq URL names, by name only ('' when unset): no credentials leave the secret."""
    return unquote(urlsplit(url.get_secret_value()).path.lstrip("/")) if url else ""


# Each variable's value is parsed by a function that raises ValueError naming the form it accepts.
PostgresUrl = Annotated[SecretStr, BeforeValidator(_postgres_url)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]
Prefix = Annotated[str, BeforeValidator(_prefix)]


class Settings(BaseModel):
    """Each field is read from the variable its alias names; unset (or blank) variables take the default."""

    model_config = ConfigDict(frozen=True)

    database_url: PostgresUrl | None = Field(None, alias="HOTPOT_DATABASE_URL")
    drill_database_url: PostgresUrl | None = Field(None, alias="HOTPOT_DRILL_DATABASE_URL")
    pg_bin_dir: Annotated[Path, BeforeValidator(_pg_bin_dir)] | None = Field(None, alias="HOTPOT_PG_BIN_DIR")
    backup_bucket: Annotated[str, BeforeValidator(_bucket)] = Field(
        "thehotpotspot-backups", alias="HOTPOT_BACKUP_BUCKET"
    )
    backup_prefix: Prefix = Field("database/", alias="HOTPOT_BACKUP_PREFIX")
    # Ten years; far inside what datetime arithmetic can subtract from today.
    backup_retention_days: Annotated[int, BeforeValidator(_whole_number(1, 3650))] = Field(
        30, alias="HOTPOT_BACKUP_RETENTION_DAYS"
    )
    # Every run lists these and reads their manifests.
    backup_min_keep: Annotated[int, BeforeValidator(_whole_number(1, 1000))] = Field(
        7, alias="HOTPOT_BACKUP_MIN_KEEP"
    )
    backup_kms_key_id: str | None = Field(None, alias="HOTPOT_BACKUP_KMS_KEY_ID")
    # pg_dump's --compress; None: zstd where this pg_dump supports it, else gzip.
    backup_compression: Annotated[str, BeforeValidator(_compression)] | None = Field(
        None, alias="HOTPOT_BACKUP_COMPRESSION"
    )
    # A backup that makes no progress this long fails; its run may last at most backup_timeout_seconds
    # (the nightly run's dagster/max_runtime; what a killed backup left is removed after it).
    backup_stall_seconds: Annotated[int, BeforeValidator(_whole_number(1, 3600))] = Field(
        300, alias="HOTPOT_BACKUP_STALL_SECONDS"
    )
    backup_timeout_seconds: Annotated[int, BeforeValidator(_whole_number(1, 172800))] = Field(
        43200, alias="HOTPOT_BACKUP_TIMEOUT_SECONDS"
    )
    # Point-in-time recovery: barman-cloud's prefix in the backup bucket and server name (CloudNativePG's
    # serverName), the wal_archive check's age limit, and the base backups' recovery window.
    pitr_prefix: Prefix = Field("pitr/", alias="HOTPOT_PITR_PREFIX")
    barman_server_name: Annotated[str, BeforeValidator(_server_name)] = Field(
        "hotpot-db", alias="HOTPOT_BARMAN_SERVER_NAME"
    )
    # Above archive_timeout (60 s in the local stack): an idle minute is not an alarm.
    wal_archive_max_age_seconds: Annotated[int, BeforeValidator(_whole_number(30, 86400))] = Field(
        300, alias="HOTPOT_WAL_ARCHIVE_MAX_AGE_SECONDS"
    )
    pitr_recovery_window_days: Annotated[int, BeforeValidator(_whole_number(1, 3650))] = Field(
        30, alias="HOTPOT_PITR_RECOVERY_WINDOW_DAYS"
    )
    pitr_driver: Annotated[str, BeforeValidator(_one_of(PITR_DRIVERS))] = Field(
        "barman-cloud", alias="HOTPOT_PITR_DRIVER"
    )
    # The CloudNativePG Cluster (and its namespace) the cloudnativepg driver backs up and recovers from.
    cnpg_namespace: Annotated[str, BeforeValidator(_dns_label)] | None = Field(
        None, alias="HOTPOT_CNPG_NAMESPACE"
    )
    cnpg_cluster: Annotated[str, BeforeValidator(_dns_subdomain)] | None = Field(
        None, alias="HOTPOT_CNPG_CLUSTER"
    )
    timezone: Annotated[str, BeforeValidator(_timezone)] = Field("UTC", alias="HOTPOT_TIMEZONE")
    # After the 02:00 nightly backup (and its verification) has finished.
    restore_drill_cron: Annotated[str, BeforeValidator(_cron)] = Field(
        "0 4 * * *", alias="HOTPOT_RESTORE_DRILL_CRON"
    )
    aws_endpoint_url: HttpUrl | None = Field(None, alias="AWS_ENDPOINT_URL")
    aws_region: str = Field("us-east-1", alias="AWS_REGION")
    registry: Annotated[str, BeforeValidator(_registry)] | None = Field(None, alias="HOTPOT_REGISTRY")
    registry_username: str | None = Field(None, alias="HOTPOT_REGISTRY_USERNAME")
    registry_password: SecretStr | None = Field(None, alias="HOTPOT_REGISTRY_PASSWORD")
    image_repository: Annotated[str, BeforeValidator(_repository)] = Field(
        "thehotpotspot/api", alias="HOTPOT_IMAGE_REPOSITORY"
    )
    # The build context; unset: build_image_job fails naming the variable (the local stack sets it).
    app_source: Annotated[Path, BeforeValidator(_app_source)] | None = Field(None, alias="HOTPOT_APP_SOURCE")
    image_builder: Annotated[str, BeforeValidator(_one_of(IMAGE_BUILDERS))] = Field(
        "buildah", alias="HOTPOT_IMAGE_BUILDER"
    )
    prometheus_url: HttpUrl | None = Field(None, alias="HOTPOT_PROMETHEUS_URL")
    router: Annotated[str, BeforeValidator(_one_of(ROUTERS))] = Field("nginx", alias="HOTPOT_ROUTER")
    # The rollout plan file; None: the packaged rollout_plan.yaml.
    rollout_plan: Annotated[Path, BeforeValidator(_readable_file)] | None = Field(
        None, alias="HOTPOT_ROLLOUT_PLAN"
    )
    # new_image_tag_sensor starts canary releases on its own (its default status RUNNING).
    auto_release: Annotated[bool, BeforeValidator(_boolean)] = Field(False, alias="HOTPOT_AUTO_RELEASE")
    # Releases are refused while WAL archiving (the pitr concern's archive) fails.
    release_wal_gate: Annotated[bool, BeforeValidator(_boolean)] = Field(
        True, alias="HOTPOT_RELEASE_WAL_GATE"
    )
    # The nginx router; the defaults are a VM's own nginx.
    nginx_upstream_conf: Annotated[Path, BeforeValidator(_upstream_conf)] = Field(
        Path("/etc/nginx/conf.d/hotpot-upstream.conf"), alias="HOTPOT_NGINX_UPSTREAM_CONF"
    )
    nginx_command: Annotated[tuple[str, ...], BeforeValidator(_nginx_command)] = Field(
        ("nginx",), alias="HOTPOT_NGINX_COMMAND"
    )
    nginx_pid_file: Annotated[Path, BeforeValidator(_absolute_path)] = Field(
        Path("/run/nginx.pid"), alias="HOTPOT_NGINX_PID_FILE"
    )
    blue_servers: Annotated[tuple[str, ...], BeforeValidator(_servers)] = Field(
        (), alias="HOTPOT_BLUE_SERVERS"
    )
    green_servers: Annotated[tuple[str, ...], BeforeValidator(_servers)] = Field(
        (), alias="HOTPOT_GREEN_SERVERS"
    )
    # Kubernetes: required by the ingress-nginx / gateway-api routers and the kaniko builder (see below).
    k8s_app_namespace: Annotated[str, BeforeValidator(_dns_label)] | None = Field(
        None, alias="HOTPOT_K8S_APP_NAMESPACE"
    )
    k8s_build_namespace: Annotated[str, BeforeValidator(_dns_label)] | None = Field(
        None, alias="HOTPOT_K8S_BUILD_NAMESPACE"
    )
    kaniko_registry_secret: Annotated[str, BeforeValidator(_dns_subdomain)] | None = Field(
        None, alias="HOTPOT_KANIKO_REGISTRY_SECRET"
    )
    alert_webhook_url: Annotated[SecretStr, BeforeValidator(_http_url)] | None = Field(
        None, alias="HOTPOT_ALERT_WEBHOOK_URL"
    )
    ui_url: HttpUrl = Field("http://127.0.0.1:3000", alias="HOTPOT_UI_URL")
    metrics_textfile: Annotated[Path, BeforeValidator(_writable_file)] | None = Field(
        None, alias="HOTPOT_METRICS_TEXTFILE"
    )

    @property
    def database_name(self) -> str:
        """HOTPOT_DATABASE_URL's database ('' when unset)."""
        return _database_name(self.database_url)

    @property
    def drill_database_name(self) -> str:
        """HOTPOT_DRILL_DATABASE_URL's database ('' when unset)."""
        return _database_name(self.drill_database_url)


# The values of unset variables: what a resource built without settings falls back on.
DEFAULTS = Settings()

# Every variable, in the order of the fields.
VARIABLES = tuple(field.alias for field in Settings.model_fields.values())


def _holds_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_holds_secret(arg) for arg in get_args(annotation))


# Variables whose values may contain credentials: never repeat them in messages.
SECRET_VARIABLES = frozenset(
    field.alias for field in Settings.model_fields.values() if _holds_secret(field.annotation)
)


def _servers_of_one_colour(given: Mapping[str, str]) -> list[str]:
    """The nginx router routes between two colours: the servers of one without the other's are a mistake."""
    blue, green = (f"HOTPOT_{color}_SERVERS" in given for color in ("BLUE", "GREEN"))
    if blue == green:
        return []
    given, missing = ("BLUE", "GREEN") if blue else ("GREEN", "BLUE")
    return [f"HOTPOT_{missing}_SERVERS is not set: expected it together with HOTPOT_{given}_SERVERS"]


# No namespace defaults to `default`: a router or builder pointed at the wrong namespace fails every release
# with 403 (or edits the wrong objects), so a Kubernetes router or builder without them stops the load.
_KUBERNETES_REQUIRES = {
    "HOTPOT_ROUTER": (("ingress-nginx", "gateway-api"), ("HOTPOT_K8S_APP_NAMESPACE",)),
    "HOTPOT_IMAGE_BUILDER": (("kaniko",), ("HOTPOT_K8S_BUILD_NAMESPACE", "HOTPOT_KANIKO_REGISTRY_SECRET")),
    "HOTPOT_PITR_DRIVER": (("cloudnativepg",), ("HOTPOT_CNPG_NAMESPACE", "HOTPOT_CNPG_CLUSTER")),
}


def _kubernetes_unset(given: Mapping[str, str]) -> list[str]:
    problems = []
    for chooser, (kinds, required) in _KUBERNETES_REQUIRES.items():
        chosen = given.get(chooser)
        if chosen in kinds:
            problems += [
                f"{variable} is not set: {chooser}={chosen} needs it"
                for variable in required
                if variable not in given
            ]
    return problems


def _problem(error: Mapping[str, Any], given: Mapping[str, str]) -> str:
    """`VARIABLE='value' is not valid: expected FORM`, with the value hidden for secrets."""
    variable = error["loc"][0]
    shown = "(value hidden: it may hold a secret)" if variable in SECRET_VARIABLES else repr(given[variable])
    accepted = error["ctx"]["error"] if error["type"] == "value_error" else error["msg"]
    return f"{variable}={shown} is not valid: expected {accepted}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every variable; report all bad ones at once."""
    environ = os.environ if environ is None else environ
    # Blank is unset.
    given = {
        variable: environ[variable].strip() for variable in VARIABLES if environ.get(variable, "").strip()
    }
    problems: list[str] = []
    try:
        settings = Settings.model_validate(given)
    except ValidationError as invalid:
        problems += [_problem(error, given) for error in invalid.errors(include_url=False)]
    problems += _servers_of_one_colour(given)
    problems += _kubernetes_unset(given)
    if problems:
        raise SettingsError("Bad configuration in the environment:\n  " + "\n  ".join(problems))
    return settings
