"""Throughput benchmark: model ceiling vs a naive server vs this service (``python -m bench.run``)."""
