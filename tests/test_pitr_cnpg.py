"""The CloudNativePG path of point-in-time recovery (HOTPOT_PITR_DRIVER=cloudnativepg), as far as it can run
here.

- Schemas: the CloudNativePG objects of deploy/k8s/ and every Backup and recovery Cluster that
  hotpot_orchestration/pitr/cnpg.py writes validate against CloudNativePG 1.25.4's CRD schemas, vendored in
  tests/cnpg_schema/ (see its README): unknown fields, required fields, types and enums.
- The shipped Cluster archives where the settings of deploy/k8s/config.yaml read and write, in the layout
  of the local barman-cloud path (gzip, SSE AES256), and RBAC names the drill's recovery Cluster.
- The driver, with the settings of deploy/k8s/config.yaml and as the code location's service account,
  against the API stand-in of tests/support/k8s_api.py, which enforces deploy/k8s/rbac-database.yaml the
  way the API server's RBAC authorizer does: every request is granted, every grant in the database
  namespace is used, and a missing grant fails the run.

The stand-in is a mock: no Kubernetes API server and no CloudNativePG operator run on this machine (no
container runtime, no cluster). It plays the operator's part where it must: in the fast tests it gives a
Backup a completed (or failed) status and a Cluster the Ready condition after a delay; in the end-to-end
test it does what the operator would do with the objects the code wrote, on this machine: barman-cloud-backup
of a real archiving PostgreSQL for a Backup, and for the recovery Cluster a real recovery from the
Cluster's `externalClusters[].barmanObjectStore` at its `recoveryTarget` (backupID, targetName) into a
scratch server, which the drill reaches in place of the `-rw` Service (there is no cluster DNS here).
What it cannot prove: that a real operator accepts the objects beyond their schema (its admission webhook),
that its instance manager backs up and its recovery job restores with them (image, storage class,
credentials Secret, network), that the `-rw` Service answers the code location's pod, or CloudNativePG's
own status transitions and timings.
"""

from __future__ import annotations

import copy
import threading
from urllib.parse import urlsplit

import dagster as dg
import jsonschema
import pytest
from support.cnpg import API_VERSION, validate_cnpg
from support.deploy import code_location_account, manifests, production_settings, sign_in
from support.k8s_api import CNPG_GROUP, KubernetesApiStandIn
from support.pitr import BUCKET, archive_everything, env_of, logical_backup, scratch_root
from support.waiting import wait_until

from hotpot_devstack import seed_sample
from hotpot_orchestration.pitr import cnpg
from hotpot_orchestration.pitr.assets import PitrResource, build_pitr_assets
from hotpot_orchestration.pitr.barman import BASE_BACKUP_COMPRESSION, WAL_COMPRESSION, BarmanCloud
from hotpot_orchestration.pitr.physical import take_base_backup
from hotpot_orchestration.pitr.recover import complete_wal, restore_base
from hotpot_orchestration.pitr.scratch import ScratchServer
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource

SETTINGS = production_settings()  # deploy/k8s/config.yaml: HOTPOT_PITR_DRIVER=cloudnativepg
CLUSTER = cnpg.CnpgCluster(namespace=SETTINGS.cnpg_namespace, name=SETTINGS.cnpg_cluster)
NAMESPACE = CLUSTER.namespace


def _shipped(kind: str, name: str) -> dict:
    (doc,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return copy.deepcopy(doc)


def _settings_barman() -> BarmanCloud:
    """The archive the settings of deploy/k8s/config.yaml read."""
    return PitrResource(
        bucket=SETTINGS.backup_bucket, prefix=SETTINGS.pitr_prefix, server_name=SETTINGS.barman_server_name
    ).barman()


def _production() -> cnpg.Production:
    """What a recovery Cluster takes from the shipped Cluster."""
    return cnpg.production_of(_shipped("Cluster", CLUSTER.name), _settings_barman())


def ready_status(cluster: dict) -> dict:
    instances = cluster["spec"]["instances"]
    return {
        "phase": "Cluster in healthy state",
        "instances": instances,
        "readyInstances": instances,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "ClusterIsReady",
                "message": "Cluster is Ready",
                "lastTransitionTime": "2026-03-01T01:00:00Z",
            }
        ],
    }


# -- schemas --------------------------------------------------------------------------------------------


def test_shipped_cloudnativepg_objects_match_the_crd_schemas():
    shipped = [doc for doc in manifests() if doc["apiVersion"] == API_VERSION]
    assert [doc["kind"] for doc in shipped] == ["Cluster"]
    for doc in shipped:
        validate_cnpg(doc)


def _set(path: str, value):
    def mutate(doc: dict) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            doc = doc[key]
        if value is None:
            del doc[leaf]
        else:
            doc[leaf] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # The seed's `monitoring.enabled` is not a CloudNativePG field: enablePodMonitor is.
        (_set("spec.monitoring", {"enabled": True}), "'enabled' was unexpected"),
        (_set("spec.backup.barmanObjectStore.compression", "gzip"), "'compression' was unexpected"),
        (_set("spec.backup.barmanObjectStore.wal.compression", "zip"), "'zip' is not one of"),
        (_set("spec.backup.barmanObjectStore.data.encryption", "aes256"), "'aes256' is not one of"),
        (_set("spec.backup.barmanObjectStore.destinationPath", None), "'destinationPath' is a required"),
        (_set("spec.backup.barmanObjectStore.s3Credentials.accessKeyId.key", None), "'key' is a required"),
        (_set("spec.instances", "3"), "'3' is not of type 'integer'"),
        (_set("spec.postgresql.parameters.archive_timeout", 60), "60 is not of type 'string'"),
    ],
    ids=[
        "seed-monitoring-enabled",
        "compression-misplaced",
        "wal-compression-enum",
        "data-encryption-enum",
        "destination-required",
        "secret-key-required",
        "instances-type",
        "parameter-type",
    ],
)
def test_the_schema_refuses_a_wrong_field(mutate, expected):
    doc = _shipped("Cluster", CLUSTER.name)
    validate_cnpg(doc)  # the shipped one is fine ...
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError, match=expected):  # ... the broken copy is not
        validate_cnpg(doc)


def test_the_cluster_archives_where_the_settings_read():
    cluster = _shipped("Cluster", CLUSTER.name)
    assert cluster["metadata"]["namespace"] == SETTINGS.cnpg_namespace
    spec = cluster["spec"]
    store = spec["backup"]["barmanObjectStore"]
    barman = _settings_barman()
    assert (store["destinationPath"], store["serverName"]) == (barman.destination, barman.server_name)
    # Compressed as the local barman-cloud path writes: what a drill unpacks is what the operator wrote.
    assert store["wal"] == {"compression": WAL_COMPRESSION, "encryption": "AES256"}
    assert store["data"] == {"compression": BASE_BACKUP_COMPRESSION, "encryption": "AES256"}
    assert spec["postgresql"]["parameters"]["archive_timeout"] == "60s"
    assert spec["instances"] == 3
    assert spec["bootstrap"]["initdb"] | {"secret": None} == {
        "database": "thehotpotspot",
        "owner": "app_user",
        "secret": None,
    }
    # The object store's credentials: a Secret of the same namespace with every key the Cluster names.
    for reference in store["s3Credentials"].values():
        secret = _shipped("Secret", reference["name"])
        assert secret["metadata"]["namespace"] == SETTINGS.cnpg_namespace
        assert reference["key"] in secret["stringData"]


def test_rbac_lets_the_drill_delete_its_recovery_cluster_only():
    (delete,) = [rule for rule in _shipped("Role", "hotpot-pitr")["rules"] if "delete" in rule["verbs"]]
    assert delete["resources"] == ["clusters"] and delete["resourceNames"] == [CLUSTER.recovery_name]


@pytest.mark.parametrize(
    "target", [{"target_name": "hotpot-2026-03-01"}, {"target_time": "2026-03-01T01:30:00Z"}]
)
def test_written_objects_match_the_crd_schemas(target):
    validate_cnpg(cnpg.backup_manifest(CLUSTER, "postgres-cluster-hotpot-2026-03-01-20260301t010000z"))
    recovery = cnpg.recovery_manifest(CLUSTER, _production(), backup_id="20260301T010000", **target)
    validate_cnpg(recovery)
    spec = recovery["spec"]
    assert "backup" not in spec, "a recovery Cluster must never archive into the production archive"
    assert spec["externalClusters"][0]["barmanObjectStore"] == _production().store
    assert spec["bootstrap"]["recovery"]["source"] == spec["externalClusters"][0]["name"]


# -- the driver against the API stand-in -----------------------------------------------------------------

WAL = "000000010000000000000004"
COMPLETED = {
    "phase": "completed",
    "backupId": "20260301T010000",
    "backupName": "backup-20260301010000",
    "beginWal": WAL,
    "endWal": "000000010000000000000005",
    "beginLSN": "0/4000028",
    "endLSN": "0/5000100",
    "startedAt": "2026-03-01T01:00:00Z",
    "stoppedAt": "2026-03-01T01:00:09Z",
    "serverName": "hotpot-db",
}


def fake_operator(*, failing: tuple[str, ...] = (), silent: bool = False):
    """Backups complete (or fail, for names in `failing`), Clusters become Ready; nothing with `silent`."""

    def controller(obj: dict) -> dict | None:
        if silent:
            return None
        if obj["kind"] == "Backup":
            if obj["metadata"]["name"] in failing:
                return {"phase": "failed", "error": "can't upload the base backup: AccessDenied"}
            return COMPLETED
        return ready_status(obj)

    return controller


def stand_in(documents: list[dict], controller) -> KubernetesApiStandIn:
    api = KubernetesApiStandIn(documents, rollout_delay=0.05, cnpg_controller=controller).start()
    api.add(_shipped("Cluster", CLUSTER.name))
    return api


@pytest.fixture
def operator_api(monkeypatch, tmp_path):
    """The stand-in with fake_operator(); a test may set another `cnpg_controller`."""
    api = stand_in(manifests(), fake_operator())
    sign_in(api, monkeypatch, tmp_path, code_location_account())
    yield api
    api.stop()
    assert api.rejected == [], "the code wrote an object the API server would refuse"


def _drill_cluster(**waits):
    """The drill's Kubernetes part: the production Cluster's object store, a recovery Cluster, Ready."""
    manifest = cnpg.recovery_manifest(
        CLUSTER,
        cnpg.production_cluster(CLUSTER, _settings_barman()),
        backup_id="20260301T010000",
        target_name="p",
    )
    return cnpg.recovery_cluster(CLUSTER, manifest, poll_seconds=0.05, log=lambda _: None, **waits)


def _recovery_exists(api) -> bool:
    return (CNPG_GROUP, "clusters", NAMESPACE, CLUSTER.recovery_name) in api.objects


def test_request_backup_waits_for_the_operator_and_returns_what_it_recorded(operator_api):
    backup = cnpg.request_backup(CLUSTER, "nightly-1", poll_seconds=0.05, log=lambda _: None)
    assert (backup.backup_id, backup.begin_wal, backup.end_lsn) == ("20260301T010000", WAL, "0/5000100")
    assert (backup.started_at, backup.stopped_at) == ("2026-03-01T01:00:00Z", "2026-03-01T01:00:09Z")
    stored = operator_api.get(CNPG_GROUP, "backups", NAMESPACE, "nightly-1")
    assert stored["spec"] == {"cluster": {"name": CLUSTER.name}, "method": "barmanObjectStore"}


def test_a_failed_backup_fails_with_the_operators_error(operator_api):
    operator_api.cnpg_controller = fake_operator(failing=("nightly-2",))
    with pytest.raises(
        cnpg.CnpgError, match=r"Backup hotpot-db/nightly-2 failed: can't upload .*AccessDenied"
    ):
        cnpg.request_backup(CLUSTER, "nightly-2", poll_seconds=0.05, log=lambda _: None)


def test_a_backup_that_never_completes_is_named_at_its_deadline(operator_api):
    operator_api.cnpg_controller = fake_operator(silent=True)
    with pytest.raises(cnpg.CnpgError, match=r"Backup hotpot-db/nightly-3 is still not started after 1 s"):
        cnpg.request_backup(CLUSTER, "nightly-3", timeout_seconds=1, poll_seconds=0.05, log=lambda _: None)


def test_recovery_cluster_is_reached_through_its_rw_service_and_deleted(operator_api):
    with _drill_cluster() as (host, port):
        assert (host, port) == (f"{CLUSTER.recovery_name}-rw.{NAMESPACE}.svc", 5432)
        assert cnpg.cluster_ready(operator_api.get(CNPG_GROUP, "clusters", NAMESPACE, CLUSTER.recovery_name))
    assert not _recovery_exists(operator_api)


def test_recovery_cluster_is_deleted_when_the_drill_fails_or_is_interrupted(operator_api):
    for interruption in (RuntimeError("row counts differ"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)), _drill_cluster():
            assert _recovery_exists(operator_api)
            raise interruption
        assert not _recovery_exists(operator_api)


def test_a_recovery_cluster_never_ready_is_named_and_deleted(operator_api):
    operator_api.cnpg_controller = fake_operator(silent=True)
    with (
        pytest.raises(cnpg.CnpgError, match=r"postgres-cluster-pitr-drill is not Ready: no status yet after"),
        _drill_cluster(timeout_seconds=1),
    ):
        pass
    assert not _recovery_exists(operator_api)


def test_a_drill_left_behind_is_named(operator_api):
    with _drill_cluster(), pytest.raises(cnpg.CnpgError, match="a drill still running"), _drill_cluster():
        pass


def test_a_cluster_archiving_elsewhere_is_refused(operator_api):
    barman = BarmanCloud(bucket="other-bucket", prefix="pitr/", server_name=SETTINGS.barman_server_name)
    with pytest.raises(
        cnpg.CnpgError, match="archives to s3://thehotpotspot-backups/pitr as hotpot-db, not to"
    ):
        cnpg.production_cluster(CLUSTER, barman)


def _everything() -> None:
    cnpg.request_backup(CLUSTER, "nightly-all", poll_seconds=0.05, log=lambda _: None)
    with _drill_cluster():
        pass


def test_every_request_is_granted_and_every_grant_in_the_database_namespace_is_used(operator_api):
    _everything()
    assert operator_api.forbidden() == []
    used = {(r.user, r.group, r.resource, r.verb) for r in operator_api.used() if r.namespace == NAMESPACE}
    granted = {
        (user, g.group, g.resource, g.verb)
        for user, g in operator_api.rbac.grants()
        if g.namespace == NAMESPACE
    }
    assert used == granted


def _without(role: str, resource: str, verb: str) -> list[dict]:
    documents = manifests()
    for doc in documents:
        if doc["kind"] == "Role" and doc["metadata"]["name"] == role:
            doc["rules"] = [
                rule
                | {"verbs": [v for v in rule["verbs"] if not (resource in rule["resources"] and v == verb)]}
                for rule in doc["rules"]
            ]
    return documents


@pytest.mark.parametrize(
    ("resource", "verb"),
    [
        ("backups", "create"),
        ("backups", "get"),
        ("clusters", "create"),
        ("clusters", "get"),
        ("clusters", "delete"),
    ],
)
def test_a_missing_grant_fails_the_run(resource, verb, monkeypatch, tmp_path):
    api = stand_in(_without("hotpot-pitr", resource, verb), fake_operator())
    sign_in(api, monkeypatch, tmp_path, code_location_account())
    try:
        with pytest.raises(cnpg.CnpgError, match="is forbidden"):
            _everything()
        assert {(r.resource, r.verb) for r in api.forbidden()} == {(resource, verb)}
    finally:
        api.stop()


def test_the_release_account_cannot_back_up_the_database(operator_api, monkeypatch, tmp_path):
    from hotpot_orchestration.platform.kubernetes import RELEASE_SERVICE_ACCOUNT

    sign_in(operator_api, monkeypatch, tmp_path, RELEASE_SERVICE_ACCOUNT)
    with pytest.raises(cnpg.CnpgError, match="is forbidden"):
        cnpg.request_backup(CLUSTER, "from-a-release", poll_seconds=0.05, log=lambda _: None)


# -- end to end: the assets, the stand-in and a real archive ---------------------------------------------


def _barman(store: dict) -> BarmanCloud:
    """The archive an object-store stanza names."""
    parts = urlsplit(store["destinationPath"])
    return BarmanCloud(
        bucket=parts.netloc,
        prefix=parts.path.strip("/") + "/",
        server_name=store["serverName"],
        endpoint_url=store.get("endpointURL"),
    )


class ArchiveOperator:
    """The operator's work done on this machine: a Backup is barman-cloud-backup of `server`; a recovery
    Cluster is a scratch server recovered from its externalClusters' object store at its recoveryTarget,
    serving until the Cluster is deleted (the thread that started it must live as long: the server dies
    with it)."""

    def __init__(self, api: KubernetesApiStandIn, server, s3):
        self.api, self.server, self.s3 = api, server, s3
        self.env = env_of(server)
        self.services: dict[str, tuple[str, int]] = {}
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, obj: dict) -> dict | None:
        if obj["kind"] == "Backup":
            return self._backup(obj)
        if "recovery" not in obj["spec"].get("bootstrap", {}):
            return ready_status(obj)
        ready = threading.Event()
        thread = threading.Thread(target=self._serve, args=(obj, ready), daemon=True)
        self.threads.append(thread)
        thread.start()
        ready.wait(240)
        return ready_status(obj) if f"{obj['metadata']['name']}-rw" in self.services else None

    def _backup(self, backup: dict) -> dict:
        ns = backup["metadata"]["namespace"]
        cluster = self.api.get(CNPG_GROUP, "clusters", ns, backup["spec"]["cluster"]["name"])
        barman = _barman(cluster["spec"]["backup"]["barmanObjectStore"])
        taken = take_base_backup(
            barman,
            PgTarget.from_url(self.server.url),
            self.s3.client(),
            label=backup["metadata"]["name"],
            env=self.env,
        )
        info = taken.info
        return {
            "phase": "completed",
            "backupId": taken.backup_id,
            "beginWal": info["begin_wal"],
            "endWal": info["end_wal"],
            "beginLSN": info["begin_xlog"],
            "endLSN": info["end_xlog"],
            "startedAt": info["begin_time_iso"],
            "stoppedAt": info["end_time_iso"],
            "serverName": barman.server_name,
        }

    def _serve(self, cluster: dict, ready: threading.Event) -> None:
        recovery = cluster["spec"]["bootstrap"]["recovery"]
        (source,) = [c for c in cluster["spec"]["externalClusters"] if c["name"] == recovery["source"]]
        barman = _barman(source["barmanObjectStore"])
        target = recovery["recoveryTarget"]
        user = PgTarget.from_url(self.server.url).user
        key = (CNPG_GROUP, "clusters", cluster["metadata"]["namespace"], cluster["metadata"]["name"])
        try:
            (base,) = [b for b in barman.list_backups(self.env) if b["backup_id"] == target["backupID"]]
            with ScratchServer(self.server.bin_dir, barman, root=scratch_root(), env=self.env) as scratch:
                restore_base(scratch, self.s3.client(), base, complete_wal(self.s3.client(), barman, base))
                scratch.configure(target_name=target["targetName"], pause_at_target=True)
                scratch.start()
                scratch.wait(user, promoted=False)
                served = scratch.target("postgres", user)
                self.services[f"{cluster['metadata']['name']}-rw"] = (served.host, served.port)
                ready.set()
                wait_until(lambda: key not in self.api.objects, 280, lambda: f"{key[3]} deleted")
        except Exception as error:  # the test reads it: the drill only sees a Cluster that is never Ready
            self.errors.append(repr(error))
        finally:
            ready.set()

    def address(self, namespace: str, service: str) -> tuple[str, int]:
        return self.services[service]


@pytest.mark.slow
def test_physical_backup_and_pitr_drill_through_the_operator(archiving_postgres, s3, monkeypatch, tmp_path):
    server = archiving_postgres
    for name, value in s3.env().items():  # the AWS chain of the code location's process
        monkeypatch.setenv(name, value)
    seed_sample(server, "app")
    pitr = PitrResource(
        bucket=BUCKET,
        prefix=server.wal_archive.prefix,
        server_name=server.wal_archive.server_name,
        endpoint_url=s3.endpoint_url,
        driver=SETTINGS.pitr_driver,
        cnpg_namespace=SETTINGS.cnpg_namespace,
        cnpg_cluster=SETTINGS.cnpg_cluster,
    )
    resources = {
        "postgres": PostgresResource(url=server.url_for("app"), pg_bin_dir=str(server.bin_dir)),
        "backup_storage": BackupStorageResource(
            bucket=BUCKET, prefix=f"{server.wal_archive.prefix}database/", endpoint_url=s3.endpoint_url
        ),
        "pitr": pitr,
    }
    # The shipped Cluster, archiving to this test's bucket as the operator would have it set for it.
    production = _shipped("Cluster", CLUSTER.name)
    production["spec"]["backup"]["barmanObjectStore"].update(
        destinationPath=pitr.barman().destination, serverName=pitr.server_name, endpointURL=s3.endpoint_url
    )
    api = KubernetesApiStandIn(manifests(), rollout_delay=0.05)
    operator = ArchiveOperator(api, server, s3)
    api.cnpg_controller = operator
    api.start()
    try:
        api.add(production)
        sign_in(api, monkeypatch, tmp_path, code_location_account())
        monkeypatch.setattr(cnpg, "service_address", operator.address)  # no cluster DNS here
        physical, _, _, drill = build_pitr_assets(SETTINGS)
        instance = dg.DagsterInstance.ephemeral()

        backed_up = dg.materialize(
            [physical], partition_key="2026-03-01", resources=resources, instance=instance
        )
        (materialization,) = backed_up.asset_materializations_for_node("physical_backup")
        backup = {key: value.value for key, value in materialization.metadata.items()}
        stored = api.get(CNPG_GROUP, "backups", NAMESPACE, backup["backup_object"])
        assert backup["backup_object"].startswith(f"{CLUSTER.name}-hotpot-2026-03-01-")
        assert backup["backup_id"] == stored["status"]["backupId"] and backup["stored_bytes"] > 0
        assert backup["begin_wal"] <= backup["end_wal"] and "/" in backup["end_lsn"]

        logical = logical_backup(server, "app")
        archive_everything(server)
        drilled = dg.materialize([drill], resources=resources, instance=instance)
        assert operator.errors == [] and f"{CLUSTER.recovery_name}-rw" in operator.services
        (materialization,) = drilled.asset_materializations_for_node("pitr_drill")
        result = {key: value.value for key, value in materialization.metadata.items()}
        assert result["base_backup_id"] == backup["backup_id"]
        assert result["restore_point"] == logical.manifest["restore_point"]["name"]
        assert result["tables_checked"] > 0 and result["rows_checked"] > 0

        (written,) = [obj for verb, what, obj in api.writes if what == f"Cluster/{CLUSTER.recovery_name}"]
        assert written["spec"]["bootstrap"]["recovery"]["recoveryTarget"] == {
            "backupID": backup["backup_id"],
            "targetName": logical.manifest["restore_point"]["name"],
        }
        assert (
            written["spec"]["externalClusters"][0]["barmanObjectStore"]
            == production["spec"]["backup"]["barmanObjectStore"]
        )
        assert not _recovery_exists(api), "the recovery Cluster outlived the drill"
        for thread in operator.threads:  # its scratch server stops once the Cluster is gone
            thread.join(60)
            assert not thread.is_alive()
        assert api.forbidden() == [] and api.rejected == []
    finally:
        api.stop()
