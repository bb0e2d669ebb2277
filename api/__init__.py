"""The query API (FastAPI) and dashboard."""
