"""Every environment variable of the design, read and validated in one place.

`load_settings()` runs when the code location loads, so a malformed value stops the load with a message
that names the variable and the form it accepts, instead of failing a run hours later. Values that carry
secrets (database URLs, the registry password, the webhook URL) are validated here but reach resources only
through `EnvVar`, and are never echoed back in an error. AWS credentials are left to boto3's own chain.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ROUTERS = ("nginx", "ingress-nginx", "gateway-api")
IMAGE_BUILDERS = ("buildah", "docker", "kaniko")
# Who takes base backups and recovers drills: barman-cloud here, or a CloudNativePG cluster's operator.
PITR_DRIVERS = ("barman-cloud", "cloudnativepg")

# Variables whose values may contain credentials: never repeat them in messages.
SECRET_VARIABLES = frozenset(
    {
        "HOTPOT_DATABASE_URL",
        "HOTPOT_DRILL_DATABASE_URL",
        "HOTPOT_ALERT_WEBHOOK_URL",
        "HOTPOT_REGISTRY_PASSWORD",
    }
)


class SettingsError(ValueError):
    """One or more environment variables have values the project cannot use."""


@dataclass(frozen=True)
class Settings:
    # Secrets are kept out of repr() so that printing the settings never shows them.
    database_url: str | None = field(repr=False)
    drill_database_url: str | None = field(repr=False)
    pg_bin_dir: Path | None
    backup_bucket: str
    backup_prefix: str
    backup_retention_days: int
    backup_min_keep: int
    backup_kms_key_id: str | None
    # pg_dump's --compress; None: zstd where this pg_dump supports it, else gzip.
    backup_compression: str | None
    # A backup that makes no progress this long fails; its run may last at most backup_timeout_seconds.
    backup_stall_seconds: int
    backup_timeout_seconds: int
    # Point-in-time recovery: barman-cloud's prefix in the backup bucket and server name (CloudNativePG's
    # serverName), the wal_archive check's age limit, and the base backups' recovery window.
    pitr_prefix: str
    barman_server_name: str
    wal_archive_max_age_seconds: int
    pitr_recovery_window_days: int
    pitr_driver: str
    # The CloudNativePG Cluster (and its namespace) the cloudnativepg driver backs up and recovers from.
    cnpg_namespace: str | None
    cnpg_cluster: str | None
    timezone: str
    restore_drill_cron: str
    aws_endpoint_url: str | None
    aws_region: str
    registry: str | None
    registry_username: str | None
    registry_password: str | None = field(repr=False)
    image_repository: str
    # The build context; unset: build_image_job fails naming the variable (the local stack sets it).
    app_source: Path | None
    image_builder: str
    prometheus_url: str | None
    router: str
    # The rollout plan file; None: the packaged rollout_plan.yaml.
    rollout_plan: Path | None
    # new_image_tag_sensor starts canary releases on its own (its default status RUNNING).
    auto_release: bool
    # Releases are refused while WAL archiving (the pitr concern's archive) fails.
    release_wal_gate: bool
    # The nginx router; None: the resource's defaults (a VM's own nginx).
    nginx_upstream_conf: Path | None
    nginx_command: tuple[str, ...] | None
    nginx_pid_file: Path | None
    blue_servers: tuple[str, ...] | None
    green_servers: tuple[str, ...] | None
    # Kubernetes: required by the ingress-nginx / gateway-api routers and the kaniko builder (see below).
    k8s_app_namespace: str | None
    k8s_build_namespace: str | None
    kaniko_registry_secret: str | None
    alert_webhook_url: str | None = field(repr=False)
    ui_url: str
    metrics_textfile: Path | None


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


# variable -> (field, parser of a set value, value when unset)
_VARIABLES = {
    "HOTPOT_DATABASE_URL": ("database_url", _postgres_url, None),
    "HOTPOT_DRILL_DATABASE_URL": ("drill_database_url", _postgres_url, None),
    "HOTPOT_PG_BIN_DIR": ("pg_bin_dir", _pg_bin_dir, None),
    "HOTPOT_BACKUP_BUCKET": ("backup_bucket", _bucket, "thehotpotspot-backups"),
    "HOTPOT_BACKUP_PREFIX": ("backup_prefix", _prefix, "database/"),
    # Ten years; far inside what datetime arithmetic can subtract from today.
    "HOTPOT_BACKUP_RETENTION_DAYS": ("backup_retention_days", _whole_number(1, 3650), 30),
    # Every run lists these and reads their manifests.
    "HOTPOT_BACKUP_MIN_KEEP": ("backup_min_keep", _whole_number(1, 1000), 7),
    "HOTPOT_BACKUP_KMS_KEY_ID": ("backup_kms_key_id", str, None),
    "HOTPOT_BACKUP_COMPRESSION": ("backup_compression", _compression, None),
    "HOTPOT_BACKUP_STALL_SECONDS": ("backup_stall_seconds", _whole_number(1, 3600), 300),
    # The nightly backup run's dagster/max_runtime; what a killed backup left is removed after it.
    "HOTPOT_BACKUP_TIMEOUT_SECONDS": ("backup_timeout_seconds", _whole_number(1, 172800), 43200),
    "HOTPOT_PITR_PREFIX": ("pitr_prefix", _prefix, "pitr/"),
    "HOTPOT_BARMAN_SERVER_NAME": ("barman_server_name", _server_name, "hotpot-db"),
    # Above archive_timeout (60 s in the local stack): an idle minute is not an alarm.
    "HOTPOT_WAL_ARCHIVE_MAX_AGE_SECONDS": ("wal_archive_max_age_seconds", _whole_number(30, 86400), 300),
    "HOTPOT_PITR_RECOVERY_WINDOW_DAYS": ("pitr_recovery_window_days", _whole_number(1, 3650), 30),
    "HOTPOT_PITR_DRIVER": ("pitr_driver", _one_of(PITR_DRIVERS), "barman-cloud"),
    "HOTPOT_CNPG_NAMESPACE": ("cnpg_namespace", _dns_label, None),
    "HOTPOT_CNPG_CLUSTER": ("cnpg_cluster", _dns_subdomain, None),
    "HOTPOT_TIMEZONE": ("timezone", _timezone, "UTC"),
    # After the 02:00 nightly backup (and its verification) has finished.
    "HOTPOT_RESTORE_DRILL_CRON": ("restore_drill_cron", _cron, "0 4 * * *"),
    "AWS_ENDPOINT_URL": ("aws_endpoint_url", _http_url, None),
    "AWS_REGION": ("aws_region", str, "us-east-1"),
    "HOTPOT_REGISTRY": ("registry", _registry, None),
    "HOTPOT_REGISTRY_USERNAME": ("registry_username", str, None),
    "HOTPOT_REGISTRY_PASSWORD": ("registry_password", str, None),
    "HOTPOT_IMAGE_REPOSITORY": ("image_repository", _repository, "thehotpotspot/api"),
    "HOTPOT_APP_SOURCE": ("app_source", _app_source, None),
    "HOTPOT_IMAGE_BUILDER": ("image_builder", _one_of(IMAGE_BUILDERS), "buildah"),
    "HOTPOT_PROMETHEUS_URL": ("prometheus_url", _http_url, None),
    "HOTPOT_ROUTER": ("router", _one_of(ROUTERS), "nginx"),
    "HOTPOT_ROLLOUT_PLAN": ("rollout_plan", _readable_file, None),
    "HOTPOT_AUTO_RELEASE": ("auto_release", _boolean, False),
    "HOTPOT_RELEASE_WAL_GATE": ("release_wal_gate", _boolean, True),
    "HOTPOT_NGINX_UPSTREAM_CONF": ("nginx_upstream_conf", _upstream_conf, None),
    "HOTPOT_NGINX_COMMAND": ("nginx_command", _nginx_command, None),
    "HOTPOT_NGINX_PID_FILE": ("nginx_pid_file", _absolute_path, None),
    "HOTPOT_BLUE_SERVERS": ("blue_servers", _servers, None),
    "HOTPOT_GREEN_SERVERS": ("green_servers", _servers, None),
    "HOTPOT_K8S_APP_NAMESPACE": ("k8s_app_namespace", _dns_label, None),
    "HOTPOT_K8S_BUILD_NAMESPACE": ("k8s_build_namespace", _dns_label, None),
    "HOTPOT_KANIKO_REGISTRY_SECRET": ("kaniko_registry_secret", _dns_subdomain, None),
    "HOTPOT_ALERT_WEBHOOK_URL": ("alert_webhook_url", _http_url, None),
    "HOTPOT_UI_URL": ("ui_url", _http_url, "http://127.0.0.1:3000"),
    "HOTPOT_METRICS_TEXTFILE": ("metrics_textfile", _writable_file, None),
}


def _servers_of_one_colour(environ: Mapping[str, str]) -> list[str]:
    """The nginx router routes between two colours: the servers of one without the other's are a mistake."""
    blue, green = (bool(environ.get(f"HOTPOT_{color}_SERVERS", "").strip()) for color in ("BLUE", "GREEN"))
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


def _kubernetes_unset(environ: Mapping[str, str]) -> list[str]:
    problems = []
    for chooser, (kinds, required) in _KUBERNETES_REQUIRES.items():
        chosen = environ.get(chooser, "").strip()
        if chosen in kinds:
            problems += [
                f"{variable} is not set: {chooser}={chosen} needs it"
                for variable in required
                if not environ.get(variable, "").strip()
            ]
    return problems


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every variable; report all bad ones at once."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    problems: list[str] = []
    for variable, (name, parse, default) in _VARIABLES.items():
        raw = environ.get(variable, "").strip()
        if not raw:
            values[name] = default
            continue
        try:
            values[name] = parse(raw)
        except ValueError as accepted:
            shown = "(value hidden: it may hold a secret)" if variable in SECRET_VARIABLES else repr(raw)
            problems.append(f"{variable}={shown} is not valid: expected {accepted}")
    problems += _servers_of_one_colour(environ)
    problems += _kubernetes_unset(environ)
    if problems:
        raise SettingsError("Bad configuration in the environment:\n  " + "\n  ".join(problems))
    return Settings(**values)
