"""Objects that are not our backups, in a backup bucket: the catalog must never list them, and retention must
never delete them."""

from __future__ import annotations

import json

FOREIGN_KEYS = [
    "database/README.txt",
    "database/hotpot/notes.txt",
    # Our shape of key, but no manifest: never listed as a backup.
    "database/hotpot/2020-01-01/hotpot-20200101T020000Z.dump",
    # Our shape of manifest key, but someone else's JSON.
    "database/hotpot/2020-01-02/hotpot-20200102T020000Z.manifest.json",
    "database/hotpot/2020-01-02/hotpot-20200102T020000Z.dump",
    "elsewhere/hotpot/2020-01-03/hotpot-20200103T020000Z.manifest.json",
]


def put_foreign_keys(client, bucket: str) -> None:
    for key in FOREIGN_KEYS:
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps({"format": "someone-else/1"}).encode())
