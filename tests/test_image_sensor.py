"""`new_image_tag_sensor` against a real registry (Debian `docker-registry`), tick after tick, feeding
back the cursor each tick returns, as the daemon does."""

from __future__ import annotations

import gzip
import json
import socket
import tempfile
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from hotpot_devstack import Registry
from hotpot_devstack.paging_proxy import PagingProxy
from hotpot_orchestration.definitions import build_definitions
from hotpot_orchestration.platform.registry import OCI_MANIFEST, RegistryClient, sha256_digest
from hotpot_orchestration.release.image import new_image_tag_sensor
from hotpot_orchestration.release.image.resource import ImageTagPolicyResource, RegistryResource
from hotpot_orchestration.settings import load_settings

pytestmark = pytest.mark.slow


def push_image(
    client: RegistryClient, repository: str, tag: str, created: datetime | None, payload: str
) -> str:
    """Push a one-layer OCI image whose config says `created`; return its digest."""
    with tempfile.TemporaryDirectory() as scratch:
        layer = gzip.compress(payload.encode(), mtime=0)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": created.isoformat().replace("+00:00", "Z") if created else None,
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(payload.encode())]},
            }
        ).encode()
        blobs = []
        for data, media_type in ((config, "application/vnd.oci.image.config.v1+json"),
                                 (layer, "application/vnd.oci.image.layer.v1.tar+gzip")):  # fmt: skip
            path = Path(scratch) / sha256_digest(data).split(":")[1]
            path.write_bytes(data)
            client.upload_blob(repository, sha256_digest(data), path)
            blobs.append({"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)})
        manifest = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": blobs[0], "layers": blobs[1:]}
        ).encode()
        return client.put_manifest(repository, tag, manifest, OCI_MANIFEST)


def at(hour: int) -> datetime:
    return datetime(2026, 3, 1, hour, tzinfo=UTC)


def commit_tag() -> str:
    return uuid.uuid4().hex[:12]


class Ticker:
    """Evaluates the sensor of a Definitions tick after tick on one instance, carrying the cursor."""

    def __init__(self, defs: dg.Definitions | None = None, resources: dict | None = None):
        self.defs, self.resources = defs, resources
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None

    def tick(self) -> dg.SensorResult:
        if self.defs is not None:
            # As the daemon does: the code location's sensor, with the location's resources that it requires.
            sensor = self.defs.resolve_sensor_def("new_image_tag_sensor")
            resources = {key: self.defs.resources[key] for key in sensor.required_resource_keys}
            context = dg.build_sensor_context(cursor=self.cursor, instance=self.instance, resources=resources)
        else:
            sensor = new_image_tag_sensor
            context = dg.build_sensor_context(
                cursor=self.cursor, instance=self.instance, resources=self.resources
            )
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor
        return result


def reason(result: dg.SensorResult) -> str:
    return result.skip_reason.skip_message if result.skip_reason else ""


def location(registry_host: str, repository: str) -> dg.Definitions:
    settings = load_settings().model_copy(update={"registry": registry_host, "image_repository": repository})
    return build_definitions(settings)


def test_one_run_per_new_digest_across_ticks(registry):
    repository = f"test/watch-{uuid.uuid4().hex[:8]}"
    defs = location(registry.host, repository)
    ticker = Ticker(defs)
    client = RegistryClient(registry.host)

    assert "has no images yet" in reason(ticker.tick())

    first_tag = commit_tag()
    first = push_image(client, repository, first_tag, at(1), "one")
    push_image(client, repository, "latest", at(1), "one")
    result = ticker.tick()
    [run] = result.run_requests
    assert run.job_name == "canary_release_job"
    assert run.run_key == f"release:{first}"
    assert run.tags["hotpot/release"] == "canary"
    assert run.tags["hotpot/image-tag"] == first_tag
    assert run.tags["hotpot/image-digest"] == first
    assert run.tags["hotpot/image-repository"] == f"{registry.host}/{repository}"
    image = {"tag": first_tag, "digest": first, "repository": repository, "registry": registry.host}
    assert run.run_config == {"resources": {"release_image": {"config": image}}}
    # The run config is valid for the job the rollout defines.
    job = defs.resolve_job_def("canary_release_job")
    assert dg.validate_run_config(job, run.run_config)

    assert ticker.tick().run_requests == []  # same tags: nothing new

    second_tag = commit_tag()
    second = push_image(client, repository, second_tag, at(2), "two")
    [run] = ticker.tick().run_requests
    assert run.tags["hotpot/image-digest"] == second

    # Another tag of the same image, and an older build pushed late: no new release.
    push_image(client, repository, commit_tag(), at(2), "two")
    push_image(client, repository, commit_tag(), at(0), "zero")
    for _ in range(2):
        result = ticker.tick()
        assert result.run_requests == [] and reason(result)

    # What production runs is never proposed, even when it is new to this sensor.
    third_tag = commit_tag()
    third = push_image(client, repository, third_tag, at(3), "three")
    ticker.instance.report_runless_asset_event(
        dg.AssetMaterialization("production_release", metadata={"digest": third})
    )
    result = ticker.tick()
    assert result.run_requests == [] and "already in production" in reason(result)

    fourth = push_image(client, repository, commit_tag(), at(4), "four")
    [run] = ticker.tick().run_requests
    assert run.tags["hotpot/image-digest"] == fourth
    assert json.loads(ticker.cursor)["seen"] == [first, second, fourth]


def test_more_tags_than_one_page(registry):
    repository = f"test/paged-{uuid.uuid4().hex[:8]}"
    client = RegistryClient(registry.host)
    digests = {}
    # 37 tags in pages of 6: seven pages, the last one short.
    for minor in range(12):
        for patch in range(3):
            tag = f"1.{minor}.{patch}"
            digests[tag] = push_image(client, repository, tag, None, tag)
    push_image(client, repository, "1.12.0-rc.1", None, "rc")
    page_size = 6
    with PagingProxy(registry.url) as proxy:
        resources = {
            "registry": RegistryResource(registry=proxy.host, repository=repository, page_size=page_size),
            "image_tag_policy": ImageTagPolicyResource(pattern=r"\d+\.\d+\.\d+(-.+)?", order="semver"),
        }
        ticker = Ticker(resources=resources)
        [run] = ticker.tick().run_requests
        assert run.tags["hotpot/image-tag"] == "1.11.2"  # 1.11.2 sorts last by version, not by name
        assert run.tags["hotpot/image-digest"] == digests["1.11.2"]
        pages = -(-(len(digests) + 1) // page_size)
        assert proxy.requests == pages + 1  # every page, then one HEAD for the winner
        proxy.requests = 0
        assert ticker.tick().run_requests == []
        assert proxy.requests == pages


def test_registry_behind_basic_auth(monkeypatch):
    repository = "test/private"
    with Registry(users={"alice": "pw"}) as private:
        writer = RegistryClient(private.host, username="alice", password="pw")
        digest = push_image(writer, repository, commit_tag(), at(5), "private")

        anonymous = Ticker(location(private.host, repository))
        assert "requires a username and password" in reason(anonymous.tick())

        monkeypatch.setenv("HOTPOT_REGISTRY_USERNAME", "alice")
        monkeypatch.setenv("HOTPOT_REGISTRY_PASSWORD", "pw")
        [run] = Ticker(location(private.host, repository)).tick().run_requests
        assert run.tags["hotpot/image-digest"] == digest

        monkeypatch.setenv("HOTPOT_REGISTRY_PASSWORD", "wrong")
        assert "refused" in reason(Ticker(location(private.host, repository)).tick())


def test_a_registry_that_is_down_skips_the_tick_with_the_reason():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    resources = {
        "registry": RegistryResource(registry=f"127.0.0.1:{port}", max_attempts=2),
        "image_tag_policy": ImageTagPolicyResource(),
    }
    result = Ticker(resources=resources).tick()
    assert result.run_requests == []
    assert reason(result).startswith("registry unavailable") and f"127.0.0.1:{port}" in reason(result)


def test_unset_registry_skips_with_the_variable_name():
    result = Ticker(
        resources={"registry": RegistryResource(), "image_tag_policy": ImageTagPolicyResource()}
    ).tick()
    assert "HOTPOT_REGISTRY is not set" in reason(result)


TAG = "abc123def456"


class MalformedRegistry:
    """A registry on 127.0.0.1 speaking just enough of the v2 API to be watched, serving the given bodies:
    `tags` for the tag list, `manifest` (with `manifest_type`) for every manifest, `config` for every blob."""

    def __init__(
        self,
        tags: bytes,
        manifest: bytes = b"",
        manifest_type: str = OCI_MANIFEST,
        config: bytes = b"",
        digest: str | None = None,
    ):
        answers = {"tags/list": (tags, "application/json"), "manifests/": (manifest, manifest_type)}
        answers["blobs/"] = (config, "application/octet-stream")

        class Handler(BaseHTTPRequestHandler):
            def answer(self, send_body: bool) -> None:
                found = (answer for part, answer in answers.items() if part in self.path)
                body, content_type = next(found, (b"{}", "application/json"))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if "/manifests/" in self.path:
                    self.send_header("Docker-Content-Digest", digest or sha256_digest(body))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self.answer(send_body=True)

            def do_HEAD(self) -> None:
                self.answer(send_body=False)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> MalformedRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def manifest(**fields) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [], **fields}).encode()


GOOD_TAGS = json.dumps({"name": "test/bad", "tags": [TAG]}).encode()
CONFIG = b'{"created": 1700000000}'
WITH_CONFIG = manifest(config={"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": sha256_digest(CONFIG), "size": len(CONFIG)})  # fmt: skip
BAD_CONFIG = b"{created: yesterday"
WITH_BAD_CONFIG = manifest(config={"digest": sha256_digest(BAD_CONFIG), "size": len(BAD_CONFIG)})


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"tags": b"{not json"}, "the tag list of test/bad from 127.0.0.1:{port} is not JSON"),
        ({"tags": b"[]"}, "the tag list of test/bad from 127.0.0.1:{port} is an array, not a JSON object"),
        ({"tags": b'{"tags": "abc123def456"}'}, "has 'tags' as a string, expected an array of strings"),
        ({"tags": b'{"tags": [123456789012]}'}, "has a tag that is a number: 123456789012"),
        ({"tags": GOOD_TAGS, "manifest": b"<html>"}, "manifest sha256:"),
        (
            {"tags": GOOD_TAGS, "manifest": b'{"mediaType": 2}', "manifest_type": ""},
            "the manifest of test/bad:abc123def456 (sha256:",
        ),
        ({"tags": GOOD_TAGS, "manifest": manifest(annotations="new")}, "has 'annotations' as a string"),
        ({"tags": GOOD_TAGS, "manifest": manifest()}, "has no config digest, so the image's config"),
        ({"tags": GOOD_TAGS, "manifest": manifest(config="sha256:1")}, "has 'config' as a string, expected"),
        (
            {"tags": GOOD_TAGS, "manifest": WITH_BAD_CONFIG, "config": BAD_CONFIG},
            f"the image config {sha256_digest(BAD_CONFIG)} of test/bad:abc123def456 is not JSON",
        ),
        (
            {"tags": GOOD_TAGS, "manifest": WITH_CONFIG, "config": CONFIG},
            "the image config of test/bad:abc123def456 has 'created' as a number, expected a string",
        ),
        (
            {"tags": GOOD_TAGS, "manifest": manifest(), "digest": "md5:0cc175b9"},
            "sent Docker-Content-Digest 'md5:0cc175b9' for test/bad:abc123def456, not a sha256 digest",
        ),
    ],
    ids=[
        "tags-not-json",
        "tags-not-an-object",
        "tags-a-string",
        "tag-a-number",
        "manifest-not-json",
        "media-type-a-number",
        "annotations-a-string",
        "manifest-without-config",
        "config-a-string",
        "config-blob-not-json",
        "created-a-number",
        "digest-not-sha256",
    ],
)
def test_a_malformed_registry_answer_skips_the_tick_naming_what_was_wrong(answers, expected):
    with MalformedRegistry(**answers) as served:
        resources = {
            "registry": RegistryResource(registry=served.host, repository="test/bad", max_attempts=1),
            "image_tag_policy": ImageTagPolicyResource(),
        }
        result = Ticker(resources=resources).tick()
    assert result.run_requests == []
    assert reason(result).startswith("malformed answer from the registry: ")
    assert expected.format(port=served.host.split(":")[1]) in reason(result)
