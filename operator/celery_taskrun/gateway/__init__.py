"""The gateway (FastAPI): the seed's task API over TaskRuns, and a live page."""
