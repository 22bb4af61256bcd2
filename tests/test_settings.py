"""Every environment variable is validated in one place, with errors that name it and its accepted form."""

import pytest

from hotpot_orchestration.settings import SECRET_VARIABLES, Settings, SettingsError, load_settings


def test_defaults_match_the_design():
    settings = load_settings({})
    assert settings.backup_bucket == "thehotpotspot-backups"
    assert settings.backup_prefix == "database/"
    assert (settings.backup_retention_days, settings.backup_min_keep) == (30, 7)
    assert settings.timezone == "UTC"
    assert settings.image_repository == "thehotpotspot/api"
    assert (settings.image_builder, settings.router) == ("buildah", "nginx")
    assert settings.alert_webhook_url is None
    assert settings.backup_compression is None  # zstd where pg_dump can write it, else gzip
    assert settings.app_source is None  # production names its build context; make dev sets the sample app
    # The nginx router's defaults are a VM's own nginx.
    assert str(settings.nginx_upstream_conf) == "/etc/nginx/conf.d/hotpot-upstream.conf"
    assert (settings.nginx_command, settings.blue_servers) == (("nginx",), ())


def test_good_values_are_parsed():
    settings = load_settings(
        {
            "HOTPOT_DATABASE_URL": "postgresql://app:pw@db.internal:5433/thehotpotspot",
            "HOTPOT_BACKUP_PREFIX": "/nightly",
            "HOTPOT_BACKUP_RETENTION_DAYS": "45",
            "HOTPOT_REGISTRY": "127.0.0.1:5000",
            "HOTPOT_PROMETHEUS_URL": "http://127.0.0.1:9090/",
            "HOTPOT_ROUTER": "gateway-api",
            "HOTPOT_K8S_APP_NAMESPACE": "hotpot",
            "HOTPOT_TIMEZONE": "Europe/Moscow",
            "HOTPOT_BACKUP_COMPRESSION": "zstd:9",
        }
    )
    assert settings.backup_compression == "zstd:9"
    assert settings.backup_prefix == "nightly/"
    assert settings.backup_retention_days == 45
    assert settings.prometheus_url == "http://127.0.0.1:9090"
    assert settings.router == "gateway-api"
    assert settings.k8s_app_namespace == "hotpot"


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"HOTPOT_ROUTER": "ingress-nginx"}, ["HOTPOT_K8S_APP_NAMESPACE"]),
        ({"HOTPOT_ROUTER": "gateway-api"}, ["HOTPOT_K8S_APP_NAMESPACE"]),
        ({"HOTPOT_IMAGE_BUILDER": "kaniko"}, ["HOTPOT_K8S_BUILD_NAMESPACE", "HOTPOT_KANIKO_REGISTRY_SECRET"]),
    ],
)
def test_kubernetes_routers_and_builders_need_their_namespaces(environ, missing):
    """No namespace defaults to `default`: the load stops, naming what to set."""
    with pytest.raises(SettingsError) as error:
        load_settings(environ)
    for variable in missing:
        assert f"{variable} is not set: {next(iter(environ))}=" in str(error.value)


def test_nginx_router_variables_configure_the_traffic_router(tmp_path):
    from hotpot_orchestration.release.rollout.resources import traffic_router_resource

    settings = load_settings(
        {
            "HOTPOT_NGINX_UPSTREAM_CONF": str(tmp_path / "upstream.conf"),
            "HOTPOT_NGINX_COMMAND": "/usr/sbin/nginx -p '/srv/my nginx/' -c /srv/nginx.conf",
            "HOTPOT_NGINX_PID_FILE": "/srv/nginx.pid",
            "HOTPOT_BLUE_SERVERS": "10.0.0.11:8080, 10.0.0.12:8080",
            "HOTPOT_GREEN_SERVERS": "[fd00::21]:8080",
        }
    )
    assert settings.nginx_command == ("/usr/sbin/nginx", "-p", "/srv/my nginx/", "-c", "/srv/nginx.conf")
    assert settings.blue_servers == ("10.0.0.11:8080", "10.0.0.12:8080")
    router = traffic_router_resource(settings)
    assert router.kind == "nginx"
    assert router.nginx_upstream_conf == str(tmp_path / "upstream.conf")
    assert router.nginx_command == ["/usr/sbin/nginx", "-p", "/srv/my nginx/", "-c", "/srv/nginx.conf"]
    assert router.nginx_pid_file == "/srv/nginx.pid"
    assert (router.blue_servers, router.green_servers) == (
        ["10.0.0.11:8080", "10.0.0.12:8080"],
        ["[fd00::21]:8080"],
    )
    defaults = traffic_router_resource(load_settings({}))
    assert defaults.nginx_upstream_conf == "/etc/nginx/conf.d/hotpot-upstream.conf"
    assert defaults.nginx_pid_file == "/run/nginx.pid"


def test_one_colour_without_the_other_is_refused():
    with pytest.raises(
        SettingsError, match="HOTPOT_GREEN_SERVERS is not set: expected it together with HOTPOT_BLUE"
    ):
        load_settings({"HOTPOT_BLUE_SERVERS": "10.0.0.11:8080"})


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("HOTPOT_NGINX_UPSTREAM_CONF", "conf.d/up.conf", "expected an absolute file path in an existing"),
        (
            "HOTPOT_NGINX_UPSTREAM_CONF",
            "/nonexistent/up.conf",
            "expected an absolute file path in an existing",
        ),
        ("HOTPOT_NGINX_COMMAND", "no-such-nginx -c x", "'no-such-nginx' is not an executable program"),
        ("HOTPOT_NGINX_COMMAND", "nginx -c 'unclosed", "quoted as in a shell"),
        ("HOTPOT_NGINX_PID_FILE", "nginx.pid", "expected an absolute path"),
        ("HOTPOT_BLUE_SERVERS", "10.0.0.11", "expected a comma-separated list of HOST:PORT"),
        ("HOTPOT_GREEN_SERVERS", "10.0.0.21:8080,", "expected a comma-separated list of HOST:PORT"),
        ("HOTPOT_GREEN_SERVERS", "10.0.0.21:99999", "expected a comma-separated list of HOST:PORT"),
        ("HOTPOT_BACKUP_RETENTION_DAYS", "-3", "expected a whole number from 1 to 3650"),
        ("HOTPOT_BACKUP_RETENTION_DAYS", "1000000", "expected a whole number from 1 to 3650"),
        ("HOTPOT_BACKUP_RETENTION_DAYS", "9" * 400, "expected a whole number from 1 to 3650"),
        ("HOTPOT_BACKUP_MIN_KEEP", "seven", "expected a whole number from 1 to 1000"),
        ("HOTPOT_BACKUP_MIN_KEEP", "1001", "expected a whole number from 1 to 1000"),
        ("HOTPOT_BACKUP_COMPRESSION", "brotli", "expected gzip or zstd, optionally with a level"),
        ("HOTPOT_BACKUP_COMPRESSION", "gzip:0", "gzip:1 to gzip:9"),
        ("HOTPOT_BACKUP_COMPRESSION", "zstd:23", "zstd:1 to zstd:22"),
        ("HOTPOT_BACKUP_COMPRESSION", "gzip:fast", "gzip:1 to gzip:9"),
        ("HOTPOT_ROUTER", "traefik", "expected one of nginx, ingress-nginx, gateway-api"),
        ("HOTPOT_IMAGE_BUILDER", "podman", "expected one of buildah, docker, kaniko"),
        ("HOTPOT_PROMETHEUS_URL", "127.0.0.1:9090", "expected an http(s) URL"),
        ("AWS_ENDPOINT_URL", "ftp://s3", "expected an http(s) URL"),
        ("HOTPOT_REGISTRY", "https://registry.example.com", "expected HOST[:PORT] without a scheme"),
        ("HOTPOT_IMAGE_REPOSITORY", "TheHotPotSpot/API", "expected a lowercase repository path"),
        ("HOTPOT_BACKUP_BUCKET", "Bad_Bucket", "expected an S3 bucket name"),
        ("HOTPOT_TIMEZONE", "Mars/Olympus", "expected an IANA time zone name"),
        ("HOTPOT_PG_BIN_DIR", "/nonexistent/bin", "expected an existing directory"),
        ("HOTPOT_APP_SOURCE", "/", "expected a source checkout with a Dockerfile"),
        ("HOTPOT_DATABASE_URL", "postgresql://app@db.internal", "expected a libpq URL"),
        ("HOTPOT_K8S_APP_NAMESPACE", "Hotpot_API", "expected a namespace name (DNS-1123 label)"),
        ("HOTPOT_K8S_BUILD_NAMESPACE", "x" * 64, "expected a namespace name (DNS-1123 label)"),
        ("HOTPOT_KANIKO_REGISTRY_SECRET", "push/creds", "expected a Kubernetes object name"),
    ],
)
def test_bad_value_names_the_variable_and_accepted_form(variable, value, expected):
    with pytest.raises(SettingsError) as error:
        load_settings({variable: value})
    assert f"{variable}=" in str(error.value)
    assert expected in str(error.value)


def test_all_bad_values_are_reported_together():
    with pytest.raises(SettingsError) as error:
        load_settings({"HOTPOT_ROUTER": "x", "HOTPOT_BACKUP_MIN_KEEP": "0"})
    assert "HOTPOT_ROUTER" in str(error.value) and "HOTPOT_BACKUP_MIN_KEEP" in str(error.value)


def test_secret_values_are_never_echoed():
    secret = "s3cr3t-Passw0rd"
    with pytest.raises(SettingsError) as error:
        load_settings(
            {
                "HOTPOT_DATABASE_URL": f"mysql://app:{secret}@db/x",
                "HOTPOT_DRILL_DATABASE_URL": f"postgresql://app:{secret}@db:notaport/x",
            }
        )
    assert secret not in str(error.value)
    assert "HOTPOT_DATABASE_URL" in str(error.value) and "HOTPOT_DRILL_DATABASE_URL" in str(error.value)


def test_secrets_are_kept_out_of_repr():
    secret = "s3cr3t-Passw0rd"
    settings = load_settings(
        {
            "HOTPOT_DATABASE_URL": f"postgresql://app:{secret}@db.internal/thehotpotspot",
            "HOTPOT_DRILL_DATABASE_URL": f"postgresql://app:{secret}@drills.internal/scratch",
            "HOTPOT_ALERT_WEBHOOK_URL": f"https://hooks.example.com/{secret}",
            "HOTPOT_REGISTRY_PASSWORD": secret,
        }
    )
    assert SECRET_VARIABLES == {
        "HOTPOT_DATABASE_URL",
        "HOTPOT_DRILL_DATABASE_URL",
        "HOTPOT_ALERT_WEBHOOK_URL",
        "HOTPOT_REGISTRY_PASSWORD",
    }
    assert secret not in repr(settings) and secret not in str(settings)
    assert secret in settings.registry_password.get_secret_value()
    # What the code location needs of the URLs without their credentials: the databases' names.
    assert (settings.database_name, settings.drill_database_name) == ("thehotpotspot", "scratch")


def _numeric_variables() -> list[str]:
    """Every variable whose value is a number."""
    return [field.alias for field in Settings.model_fields.values() if field.annotation in (int, float)]


def test_every_numeric_setting_has_an_upper_bound_refused_by_name():
    numeric = _numeric_variables()
    assert {"HOTPOT_BACKUP_RETENTION_DAYS", "HOTPOT_BACKUP_MIN_KEEP"} <= set(numeric)
    for variable in numeric:
        with pytest.raises(SettingsError) as error:
            load_settings({variable: "1000000000000"})
        assert f"{variable}='1000000000000' is not valid" in str(error.value)


def test_the_longest_retention_allowed_plans_without_overflow():
    """HOTPOT_BACKUP_RETENTION_DAYS=1000000 once loaded and crashed backup_retention with OverflowError."""
    from datetime import UTC, datetime, timedelta

    from hotpot_orchestration.backups.catalog import Backup
    from hotpot_orchestration.backups.retention import plan_retention

    with pytest.raises(SettingsError, match="HOTPOT_BACKUP_RETENTION_DAYS='1000000' is not valid"):
        load_settings({"HOTPOT_BACKUP_RETENTION_DAYS": "1000000"})
    longest = load_settings({"HOTPOT_BACKUP_RETENTION_DAYS": "3650", "HOTPOT_BACKUP_MIN_KEEP": "1000"})
    now = datetime.now(UTC)
    old = Backup("d/x.dump", "d/x.manifest.json", "2020-01-01", now - timedelta(days=4000), {}, True)
    plan = plan_retention(
        [old], now=now, retention_days=longest.backup_retention_days, min_keep=longest.backup_min_keep
    )
    assert plan.keep == [old] and plan.guarded == [old]
