"""Benchmarks of the project, each run beside its anchor from /work/shared/anchors in the same run."""
