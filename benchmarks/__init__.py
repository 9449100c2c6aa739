"""The benchmark suite behind BENCHMARKS.md; run its scripts as modules from the repository root:
``python -m benchmarks.run_all --quick`` (see README.md here)."""
