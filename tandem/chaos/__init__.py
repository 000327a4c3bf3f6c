"""The chaos suite: real node processes under faults (see docs/chaos.md)."""
