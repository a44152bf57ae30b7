"""hub-prefetch benchmarks: `python -m benchmarks.run --quick|--full` (see benchmarks/run.py)."""
