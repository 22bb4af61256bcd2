"""Shared resources: the databases, the backup bucket, the image registry and the metrics server."""
