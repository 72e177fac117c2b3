"""GPU workers: the Celery app, the vLLM engine and the shard task."""
