"""The active-learning benchmark (run it with python -m bench.al_benchmark)."""
