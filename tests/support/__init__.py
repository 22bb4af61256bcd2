"""Helpers shared by several test modules (tests/ is on sys.path under pytest's default import mode, so
they are imported as `support.NAME`)."""
