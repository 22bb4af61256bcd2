"""Point-in-time recovery through a CloudNativePG cluster's operator (HOTPOT_PITR_DRIVER=cloudnativepg).

In production the database is a CloudNativePG `Cluster` (deploy/k8s/postgres-cluster.yaml) whose operator
archives WAL and takes base backups with barman-cloud into the same layout the local path uses
(HOTPOT_BACKUP_BUCKET / HOTPOT_PITR_PREFIX / HOTPOT_BARMAN_SERVER_NAME). Its data directory is not
readable from the code location, so:

- a base backup is a `Backup` object the operator carries out (`request_backup`);
- a drill recovers into a `Cluster` of its own, bootstrapped from the object store at a recovery target
  (`recovery_cluster`), reached through its `-rw` Service and deleted afterwards, whatever happens.

Every request here is one that deploy/k8s/rbac-database.yaml grants in HOTPOT_CNPG_NAMESPACE.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.pitr.physical import BaseBackup, stored_bytes
from hotpot_orchestration.pitr.recover import base_backup_before, complete_wal
from hotpot_orchestration.platform.pg import PgTarget

if TYPE_CHECKING:
    from hotpot_orchestration.pitr.drill import DrillResult

GROUP, VERSION = "postgresql.cnpg.io", "v1"
API_VERSION = f"{GROUP}/{VERSION}"
# A base backup of a large database, or its recovery, may take hours; the run's own limits end it sooner.
BACKUP_TIMEOUT_SECONDS = 6 * 3600
RECOVERY_TIMEOUT_SECONDS = 6 * 3600
POLL_SECONDS = 10.0
FAILED_BACKUP_PHASES = ("failed", "walArchivingFailing")
POSTGRES_PORT = 5432
# What a recovery Cluster takes over from the production one: the same image and parameters (a standby's
# max_connections and the like must not be lower than the primary's) and room for the same data.
COPIED_SPEC = ("imageName", "postgresql", "storage")


class CnpgError(RuntimeError):
    """The operator refused or failed a backup or a recovery, or did not finish it in time."""


@dataclass(frozen=True)
class CnpgCluster:
    """The production Cluster (HOTPOT_CNPG_NAMESPACE / HOTPOT_CNPG_CLUSTER)."""

    namespace: str
    name: str

    @property
    def recovery_name(self) -> str:
        """The drill's recovery Cluster: one fixed name, so RBAC can grant `delete` for it alone and a
        second drill cannot start beside one still running."""
        return f"{self.name}-pitr-drill"


def service_address(namespace: str, service: str) -> tuple[str, int]:
    """Where a Service of another namespace is reached from the code location's pod."""
    return f"{service}.{namespace}.svc", POSTGRES_PORT


def _custom_objects(client=None):
    from kubernetes import client as k8s  # lazy: only the cloudnativepg driver needs it

    from hotpot_orchestration.release.rollout.routers.kubernetes import api_client

    return k8s.CustomObjectsApi(client or api_client())


def _api_error(error) -> str:
    """The API server's own message of an ApiException (its Status body), else the exception."""
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(error)


def _wait(
    read: Callable[[], dict],
    done: Callable[[dict], bool],
    *,
    timeout_seconds: float,
    poll_seconds: float,
    waiting_for: Callable[[dict], str],
) -> dict:
    deadline = time.monotonic() + timeout_seconds
    while True:
        obj = read()
        if done(obj):
            return obj
        if time.monotonic() >= deadline:
            raise CnpgError(f"{waiting_for(obj)} after {timeout_seconds:.0f} s")
        time.sleep(poll_seconds)


# --------------------------------------------------------------------------- base backups


def backup_manifest(cluster: CnpgCluster, name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Backup",
        "metadata": {
            "name": name,
            "namespace": cluster.namespace,
            "labels": {"app.kubernetes.io/managed-by": "hotpot-orchestration"},
        },
        "spec": {"cluster": {"name": cluster.name}, "method": "barmanObjectStore"},
    }


@dataclass(frozen=True)
class CnpgBackup:
    """A completed Backup: what its status says about the base backup."""

    name: str  # the Backup object
    backup_id: str  # barman's
    begin_wal: str
    end_wal: str
    begin_lsn: str
    end_lsn: str
    started_at: str
    stopped_at: str
    seconds: float

    @property
    def metadata(self) -> dict[str, Any]:
        """What the operator adds to a base backup's metadata."""
        return {"backup_object": self.name, "started_at": self.started_at, "stopped_at": self.stopped_at}


def request_backup(
    cluster: CnpgCluster,
    name: str,
    *,
    timeout_seconds: float = BACKUP_TIMEOUT_SECONDS,
    poll_seconds: float = POLL_SECONDS,
    client=None,
    log: Callable[[str], None] = print,
) -> CnpgBackup:
    """Create the Backup `name` of `cluster` and wait until the operator completed it."""
    from kubernetes.client.exceptions import ApiException

    api = _custom_objects(client)
    where = f"Backup {cluster.namespace}/{name}"
    started = time.monotonic()
    try:
        api.create_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, "backups", backup_manifest(cluster, name)
        )
        log(f"{where} of Cluster {cluster.name} created; waiting for CloudNativePG to complete it")
        backup = _wait(
            lambda: api.get_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "backups", name),
            lambda obj: obj.get("status", {}).get("phase") in ("completed", *FAILED_BACKUP_PHASES),
            timeout_seconds=timeout_seconds,
            poll_seconds=poll_seconds,
            waiting_for=lambda obj: f"{where} is still {obj.get('status', {}).get('phase') or 'not started'}",
        )
    except ApiException as error:
        raise CnpgError(f"{where}: {_api_error(error)}") from None
    status = backup["status"]
    if status["phase"] != "completed":
        reason = status.get("error") or status.get("commandError") or "no error given"
        raise CnpgError(f"{where} {status['phase']}: {reason}")
    return CnpgBackup(
        name=name,
        backup_id=status["backupId"],
        begin_wal=status.get("beginWal", ""),
        end_wal=status.get("endWal", ""),
        begin_lsn=status.get("beginLSN", ""),
        end_lsn=status.get("endLSN", ""),
        started_at=status.get("startedAt", ""),
        stopped_at=status.get("stoppedAt", ""),
        seconds=time.monotonic() - started,
    )


def take_base_backup(
    cluster: CnpgCluster, barman: BarmanCloud, s3_client, *, label: str, log: Callable[[str], None] = print
) -> tuple[BaseBackup, CnpgBackup]:
    """A base backup by the operator, described as the local path describes its own (BaseBackup), with
    the Backup it came from."""
    name = f"{cluster.name}-{label}-{datetime.now(UTC):%Y%m%dt%H%M%Sz}".lower()
    backup = request_backup(cluster, name, log=log)
    info = {
        "begin_wal": backup.begin_wal,
        "end_wal": backup.end_wal,
        "begin_xlog": backup.begin_lsn,
        "end_xlog": backup.end_lsn,
        "begin_time": backup.started_at,
        "end_time": backup.stopped_at,
    }
    base = BaseBackup(
        backup_id=backup.backup_id,
        name=name,
        info=info,
        stored_bytes=stored_bytes(s3_client, barman, backup.backup_id),
        seconds=backup.seconds,
    )
    return base, backup


# --------------------------------------------------------------------------- recovery


@dataclass(frozen=True)
class Production:
    """What a recovery Cluster takes from the production one."""

    store: dict[str, Any]  # spec.backup.barmanObjectStore
    spec: dict[str, Any]  # the COPIED_SPEC keys it sets
    database: str  # the application database and its owner, as initdb created them
    owner: str


def production_cluster(cluster: CnpgCluster, barman: BarmanCloud, client=None) -> Production:
    """The production Cluster, once its barmanObjectStore is known to be the archive `barman` reads."""
    from kubernetes.client.exceptions import ApiException

    try:
        production = _custom_objects(client).get_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, "clusters", cluster.name
        )
    except ApiException as error:
        raise CnpgError(f"Cluster {cluster.namespace}/{cluster.name}: {_api_error(error)}") from None
    return production_of(production, barman)


def production_of(production: dict[str, Any], barman: BarmanCloud) -> Production:
    """What a recovery Cluster takes from the production Cluster `production`, refused unless it archives
    to `barman`'s archive."""
    cluster = CnpgCluster(namespace=production["metadata"]["namespace"], name=production["metadata"]["name"])
    store = production["spec"].get("backup", {}).get("barmanObjectStore")
    if store is None:
        raise CnpgError(f"Cluster {cluster.namespace}/{cluster.name} has no spec.backup.barmanObjectStore")
    archived_to = (store["destinationPath"].rstrip("/"), store.get("serverName", cluster.name))
    if archived_to != (barman.destination, barman.server_name):
        raise CnpgError(
            f"Cluster {cluster.namespace}/{cluster.name} archives to {archived_to[0]} as {archived_to[1]}, "
            f"not to {barman.destination} as {barman.server_name} (HOTPOT_BACKUP_BUCKET, HOTPOT_PITR_PREFIX, "
            "HOTPOT_BARMAN_SERVER_NAME): the restore points and base backups this drill picks are not there"
        )
    initdb = production["spec"].get("bootstrap", {}).get("initdb", {})
    database = initdb.get("database", "app")  # CloudNativePG's defaults
    return Production(
        store=store,
        spec={key: production["spec"][key] for key in COPIED_SPEC if key in production["spec"]},
        database=database,
        owner=initdb.get("owner", database),
    )


def recovery_manifest(
    cluster: CnpgCluster,
    production: Production,
    *,
    backup_id: str,
    target_name: str | None = None,
    target_time: str | None = None,
) -> dict[str, Any]:
    """A one-instance Cluster recovered from the production Cluster's object store to a restore point
    (`target_name`) or a time (`target_time`, RFC 3339), starting from the base backup `backup_id`. It has
    no `spec.backup`: it never archives into the production archive."""
    target = {"backupID": backup_id}
    target.update({"targetName": target_name} if target_name else {"targetTime": target_time})
    return {
        "apiVersion": API_VERSION,
        "kind": "Cluster",
        "metadata": {
            "name": cluster.recovery_name,
            "namespace": cluster.namespace,
            "labels": {"app.kubernetes.io/managed-by": "hotpot-orchestration"},
        },
        "spec": {
            **production.spec,
            "instances": 1,
            "bootstrap": {
                "recovery": {
                    "source": cluster.name,
                    "database": production.database,
                    "owner": production.owner,
                    "recoveryTarget": target,
                }
            },
            "externalClusters": [{"name": cluster.name, "barmanObjectStore": production.store}],
        },
    }


def cluster_ready(obj: dict[str, Any]) -> bool:
    """The operator's Ready condition is True and every instance is ready."""
    status = obj.get("status", {})
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
    return ready and status.get("readyInstances", 0) >= obj["spec"]["instances"]


@contextlib.contextmanager
def recovery_cluster(
    cluster: CnpgCluster,
    manifest: dict[str, Any],
    *,
    timeout_seconds: float = RECOVERY_TIMEOUT_SECONDS,
    poll_seconds: float = POLL_SECONDS,
    client=None,
    log: Callable[[str], None] = print,
) -> Iterator[tuple[str, int]]:
    """Create the recovery Cluster `manifest`, wait until it is Ready and yield (host, port) of its `-rw`
    Service; the Cluster is deleted on exit, whatever ends the block (an interrupted run too)."""
    from kubernetes.client.exceptions import ApiException

    api = _custom_objects(client)
    name = manifest["metadata"]["name"]
    where = f"recovery Cluster {cluster.namespace}/{name}"
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "clusters", manifest)
    except ApiException as error:
        hint = " (a drill still running, or one whose Cluster was left behind)" if error.status == 409 else ""
        raise CnpgError(f"{where}: {_api_error(error)}{hint}") from None
    try:
        log(f"{where} created; waiting for it to be Ready")
        try:
            _wait(
                lambda: api.get_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "clusters", name),
                cluster_ready,
                timeout_seconds=timeout_seconds,
                poll_seconds=poll_seconds,
                waiting_for=lambda obj: (
                    f"{where} is not Ready: {obj.get('status', {}).get('phase') or 'no status yet'}"
                ),
            )
        except ApiException as error:
            raise CnpgError(f"{where}: {_api_error(error)}") from None
        yield service_address(cluster.namespace, f"{name}-rw")
    finally:
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "clusters", name)
        except ApiException as error:
            if error.status != 404:
                raise CnpgError(
                    f"{where} could not be deleted, delete it by hand: {_api_error(error)}"
                ) from None
        log(f"{where} deleted")


# --------------------------------------------------------------------------- the drill


def run_drill(
    *,
    cluster: CnpgCluster,
    barman: BarmanCloud,
    client,
    backup_bucket: str,
    backup_prefix: str,
    source: PgTarget,
    env: dict[str, str],
    log: Callable[[str], None] = print,
    timeout_seconds: float = RECOVERY_TIMEOUT_SECONDS,
    poll_seconds: float = POLL_SECONDS,
    api_client=None,
) -> DrillResult:
    """The local drill's check through CloudNativePG: the newest logical backup's restore point, the base
    backup before it (its WAL complete), a recovery Cluster stopped there, every table's row count as in
    the logical manifest. The recovered database is reached with `source`'s role and password, which the
    physical copy holds. The RPO is not measured: the recovery Cluster ends at the restore point."""
    # On use: the row counts bring psycopg, which the code location's load must not import.
    from hotpot_orchestration.pitr.drill import (
        DrillResult,
        check_restore_point,
        newest_logical_with_restore_point,
    )

    logical = newest_logical_with_restore_point(client, backup_bucket, backup_prefix, source.dbname)
    point = logical.manifest["restore_point"]
    base = base_backup_before(barman, point["lsn"], env)
    complete_wal(client, barman, base, restore_point=(point["name"], point["lsn"]))
    result = DrillResult(
        backup_id=base["backup_id"], manifest_key=logical.manifest_key, restore_point=point["name"]
    )
    result.notes.append("RPO not measured: the CloudNativePG recovery Cluster ends at the restore point")
    manifest = recovery_manifest(
        cluster,
        production_cluster(cluster, barman, api_client),
        backup_id=base["backup_id"],
        target_name=point["name"],
    )
    log(
        f"point-in-time drill on CloudNativePG: base backup {base['backup_id']}, then WAL to the restore "
        f"point {point['name']} of {logical.manifest_key}"
    )
    started = time.monotonic()
    with recovery_cluster(
        cluster,
        manifest,
        timeout_seconds=timeout_seconds,
        poll_seconds=poll_seconds,
        client=api_client,
        log=log,
    ) as (host, port):
        result.to_restore_point_seconds = time.monotonic() - started
        check_restore_point(replace(source, host=host, port=port), logical, result, log)
    result.total_seconds = time.monotonic() - started
    return result
