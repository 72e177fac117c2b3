"""Prometheus metrics for workers and the queue."""
