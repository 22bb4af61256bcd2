"""CloudNativePG's Backup and Cluster schemas (tests/cnpg_schema/, see its README) as validators."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "cnpg_schema"
API_VERSION = "postgresql.cnpg.io/v1"
PLURALS = {"Backup": "backups", "Cluster": "clusters"}


def _closed(schema: dict) -> dict:
    """Every object that lists its properties refuses others, as strict field validation does."""
    if "properties" in schema:
        schema.setdefault("additionalProperties", False)
    for key in ("properties",):
        for child in schema.get(key, {}).values():
            _closed(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _closed(schema[key])
    return schema


@functools.cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    path = SCHEMA_DIR / f"{PLURALS[kind]}.postgresql.cnpg.io.v1.yaml"
    return jsonschema.Draft7Validator(_closed(copy.deepcopy(yaml.safe_load(path.read_text()))))


def validate_cnpg(obj: dict) -> None:
    """Raise jsonschema.ValidationError (path and message) unless `obj` matches its kind's CRD schema."""
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") not in PLURALS:
        raise jsonschema.ValidationError(f"not a {API_VERSION} Backup or Cluster: {obj.get('kind')}")
    error = jsonschema.exceptions.best_match(validator(obj["kind"]).iter_errors(obj))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(root)"
        raise jsonschema.ValidationError(f"{obj['kind']} {where}: {error.message}")
