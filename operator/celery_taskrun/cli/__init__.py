"""`kubectl-taskrun`: TaskRuns from a shell or a pipeline (a kubectl plugin, and a command
of its own): the seed's `delay()` then `get(timeout=...)`, with the outcome as exit code."""
