"""What the services tell their operators: structured logs (logs.py) and Prometheus metrics (metrics.py)."""
