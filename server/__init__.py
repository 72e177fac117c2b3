"""The OpenAI-compatible Batch API (``dscbatch serve``): files and batches over dscbatch jobs."""
