"""Benchmarks: commands that measure and write JSON (never timed tests)."""
