"""The Hot Pot Spot operations pipeline as a Dagster code location."""
