"""Unpacking a base backup's parts (pitr/unpack.py) against real S3 servers (moto, SeaweedFS), with parts
written the way barman-cloud-backup writes them: tarfile streams, snappy- or gzip-compressed, numbered
data_0001, ... Real barman-cloud-backup output is unpacked by the drill tests (test_pitr_drill,
test_pitr_dagster)."""

from __future__ import annotations

import gzip
import io
import secrets
import tarfile

import pytest
import snappy

from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.pitr.unpack import UnpackError, base_backup_parts, unpack_base_backup

BACKUP_ID = "20260301T120000"


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def snappy_of(data: bytes) -> bytes:
    compressor = snappy.StreamCompressor()
    return b"".join(compressor.add_chunk(data[i : i + 65536]) for i in range(0, len(data), 65536))


@pytest.fixture
def store(s3_server):
    client = s3_server.client()
    bucket = f"unpack-{secrets.token_hex(4)}"
    client.create_bucket(Bucket=bucket)
    barman = BarmanCloud(bucket=bucket, prefix="pitr/", server_name="db")
    base = f"{barman.server_prefix}base/{BACKUP_ID}/"
    client.put_object(Bucket=bucket, Key=base + "backup.info", Body=b"backup_id=" + BACKUP_ID.encode())
    return client, barman, base


# Three parts, as one data directory split by --max-archive-size: each file whole in one part, the last
# holding backup_label. Incompressible content so that a part spans several 1 MiB chunks.
PARTS = {
    "data.tar.snappy": {"global/pg_control": b"control", "base/1/1259": secrets.token_bytes(3_000_000)},
    "data_0001.tar.snappy": {"base/1/2608": secrets.token_bytes(2_500_000), "PG_VERSION": b"15\n"},
    "data_0002.tar.snappy": {"base/1/16384": b"\0" * 4_000_000, "backup_label": b"START WAL LOCATION"},
}


def put_parts(client, barman, base, parts=PARTS, *, encode=snappy_of):
    for name, files in parts.items():
        client.put_object(Bucket=barman.bucket, Key=base + name, Body=encode(tar_of(files)))


def test_every_part_is_unpacked_whole(store, tmp_path):
    client, barman, base = store
    put_parts(client, barman, base)

    read = unpack_base_backup(client, barman, BACKUP_ID, tmp_path, log=lambda _: None)

    for files in PARTS.values():
        for name, content in files.items():
            assert (tmp_path / name).read_bytes() == content
    assert read == sum(p.size for p in base_backup_parts(client, barman, BACKUP_ID))
    assert not list(
        tmp_path.glob(".unpacking-*")
    )  # each part's own directory, emptied into the data directory


def test_gzip_parts_are_unpacked_too(store, tmp_path):
    client, barman, base = store
    parts = {name.replace(".snappy", ".gz"): files for name, files in PARTS.items()}
    put_parts(client, barman, base, parts, encode=gzip.compress)

    unpack_base_backup(client, barman, BACKUP_ID, tmp_path, log=lambda _: None)

    assert (tmp_path / "backup_label").read_bytes() == b"START WAL LOCATION"
    assert (tmp_path / "base/1/2608").read_bytes() == PARTS["data_0001.tar.snappy"]["base/1/2608"]


def test_a_part_cut_at_a_file_boundary_is_refused(store, tmp_path):
    """GNU tar reads a tar cut between two members without complaint: the missing end-of-archive blocks
    (and the compressed stream's end) must tell."""
    client, barman, base = store
    put_parts(client, barman, base)
    whole = tar_of(PARTS["data_0001.tar.snappy"])
    cut = whole[: 512 + 2_500_000 + (-2_500_000 % 512)]  # the first member, header and padded content
    client.put_object(Bucket=barman.bucket, Key=base + "data_0001.tar.snappy", Body=snappy_of(cut))

    with pytest.raises(UnpackError, match="data_0001.tar.snappy ends early"):
        unpack_base_backup(client, barman, BACKUP_ID, tmp_path, log=lambda _: None)


def test_a_corrupted_byte_is_refused_naming_the_part(store, tmp_path):
    client, barman, base = store
    put_parts(client, barman, base)
    body = bytearray(snappy_of(tar_of(PARTS["data.tar.snappy"])))
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=barman.bucket, Key=base + "data.tar.snappy", Body=bytes(body))

    with pytest.raises(UnpackError, match="data.tar.snappy"):
        unpack_base_backup(client, barman, BACKUP_ID, tmp_path, log=lambda _: None)


def test_a_missing_part_is_named_before_anything_is_read(store, tmp_path):
    client, barman, base = store
    put_parts(client, barman, base)
    client.delete_object(Bucket=barman.bucket, Key=base + "data_0001.tar.snappy")

    with pytest.raises(UnpackError, match="lacks parts .*: data_0001.tar"):
        unpack_base_backup(client, barman, BACKUP_ID, tmp_path, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_backup_and_tablespaces_are_refused(store, tmp_path):
    client, barman, base = store
    with pytest.raises(UnpackError, match="has no data.tar part"):
        base_backup_parts(client, barman, BACKUP_ID)
    with pytest.raises(UnpackError, match="not in the object store: no s3://.*/backup.info"):
        base_backup_parts(client, barman, "20990101T000000")

    put_parts(client, barman, base)
    put_parts(client, barman, base, {"16385.tar.snappy": {"PG_VERSION": b"15\n"}})
    with pytest.raises(UnpackError, match=r"tablespaces \(oids 16385\)"):
        base_backup_parts(client, barman, BACKUP_ID)
