"""The cross-cutting core below every other package: errors, settings, Redis key names and the Celery runtime
(the app, its task and queue names, the consumer, the heartbeat loop and the process exit) that GPU workers,
executors, the API server and the CLI share. It imports nothing else of dscbatch."""
