"""The clients of the outside world: the Kubernetes API, the result backend, the
Celery broker.  They know nothing of the engine.
"""
