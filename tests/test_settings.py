"""Every environment variable is validated in one place, with errors that name it and its accepted form."""

import pytest

from hotpot_orchestration.settings import SettingsError, load_settings


def test_defaults_match_the_design():
    settings = load_settings({})
    assert settings.backup_bucket == "thehotpotspot-backups"
    assert settings.backup_prefix == "database/"
    assert (settings.backup_retention_days, settings.backup_min_keep) == (30, 7)
    assert settings.timezone == "UTC"
    assert settings.image_repository == "thehotpotspot/api"
    assert (settings.image_builder, settings.router) == ("buildah", "nginx")
    assert settings.alert_webhook_url is None
    assert settings.app_source.name == "sample_app"


def test_good_values_are_parsed():
    settings = load_settings(
        {
            "HOTPOT_DATABASE_URL": "postgresql://app:pw@db.internal:5433/thehotpotspot",
            "HOTPOT_BACKUP_PREFIX": "/nightly",
            "HOTPOT_BACKUP_RETENTION_DAYS": "45",
            "HOTPOT_REGISTRY": "127.0.0.1:5000",
            "HOTPOT_PROMETHEUS_URL": "http://127.0.0.1:9090/",
            "HOTPOT_ROUTER": "gateway-api",
            "HOTPOT_TIMEZONE": "Europe/Moscow",
        }
    )
    assert settings.backup_prefix == "nightly/"
    assert settings.backup_retention_days == 45
    assert settings.prometheus_url == "http://127.0.0.1:9090"
    assert settings.router == "gateway-api"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("HOTPOT_BACKUP_RETENTION_DAYS", "-3", "expected a whole number of at least 1"),
        ("HOTPOT_BACKUP_MIN_KEEP", "seven", "expected a whole number of at least 1"),
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
