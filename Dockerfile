# celery-taskrun: one image for the operator and for Celery workers.
#
#   docker build -t celery-taskrun:dev .
#   operator (the default):  celery-taskrun-operator --liveness http://0.0.0.0:8080/healthz
#   worker (override the command, as deploy/worker.yaml does):
#       celery -A taskrun_workers.app worker --pool=prefork --loglevel=INFO
#   gateway (likewise, deploy/gateway.yaml):  celery-taskrun-gateway --host 0.0.0.0
#
# Both read CELERY_BROKER_URL and CELERY_RESULT_BACKEND; the operator also reads
# TASKRUN_CONFIG, TASKRUN_METRICS_PORT and TASKRUN_METRICS_HOST.
#
# Workers with your own tasks: build on this image, into the same virtualenv, e.g.
#   FROM celery-taskrun:dev
#   USER root
#   RUN pip install --no-cache-dir my-tasks      # `pip` is the virtualenv's (PATH)
#   USER 10001:10001
# and list the modules in TASKRUN_WORKER_IMPORTS.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/celery-taskrun
WORKDIR /src
# Only what the package needs: a change to tests or deploy/ does not rebuild it.
# (README.md* : the package's readme, copied when the repository has one.)
COPY pyproject.toml README.md* ./
COPY operator/ operator/
COPY workers/ workers/
COPY devstack/taskrun_dev/ devstack/taskrun_dev/
RUN /opt/celery-taskrun/bin/pip install .

FROM python:3.11-slim
# USER: Kopf names its peer identity after the login name, and Python's getpass looks
# it up in /etc/passwd (a KeyError, and the operator dies) unless $USER is set: with
# this, a pod whose runAsUser has no passwd entry (OpenShift, a chart override) works.
ENV PATH=/opt/celery-taskrun/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    USER=taskrun
# A fixed numeric uid/gid, so `runAsNonRoot: true` can verify it without runAsUser.
RUN groupadd --system --gid 10001 taskrun \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin taskrun
COPY --from=build /opt/celery-taskrun /opt/celery-taskrun
USER 10001:10001
WORKDIR /tmp
# 8080: Kopf's liveness endpoint (--liveness); 9808: Prometheus metrics.
EXPOSE 8080 9808
ENTRYPOINT ["celery-taskrun-operator"]
