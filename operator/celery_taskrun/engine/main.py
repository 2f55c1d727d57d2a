"""`celery-taskrun-operator`: the operator's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from celery_taskrun.api.config import globbed
from celery_taskrun.core.redact import RedactingFormatter, redact, secrets_of
from celery_taskrun.engine import config_file, metrics

# The API server stores objects nested up to 10,000 levels deep; Python's JSON decoder
# recurses once per level and stops at the recursion limit (1,000), and the watch
# decodes every object before any handler can refuse it.  The decoder's C frames are
# small: 10,000 levels fit the main thread's stack many times over.
RECURSION_LIMIT = 25_000


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="celery-taskrun-operator",
        description="Run Celery tasks declared as TaskRun resources.",
    )
    parser.add_argument("--config", help="YAML config file (default: $TASKRUN_CONFIG)")
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable, globs allowed); default: all",
    )
    parser.add_argument(
        "--liveness", help="Kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    # Kopf imports the generated Kubernetes clients whenever they are installed (to log
    # in through them, and to know their models); the operator speaks through its own
    # (clients/apiserver.py), and the tests' `kubernetes` is installed beside it.
    # Kept out, Kopf logs in by itself, and the operator is spared the clients' models
    # (55 MiB for `kubernetes_asyncio`'s alone).
    for generated in ("kubernetes", "kubernetes_asyncio"):
        sys.modules.setdefault(generated, None)  # type: ignore[arg-type]
    import kopf
    from kopf._cogs.clients import watching

    from celery_taskrun.engine import handlers  # noqa: F401  (registers the Kopf handlers)
    from celery_taskrun.engine.echoes import Echoes, without_echoes
    from celery_taskrun.engine.memories import Forgetful

    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=LOG_FORMAT)
    if not args.verbose:
        # Kopf logs every handler call; the tracker logs what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        config = config_file.load(args.config)
    except (ValidationError, OSError, ValueError) as exc:
        sys.exit(f"celery-taskrun-operator: invalid configuration: {redact(str(exc))}")
    secrets = secrets_of([config.brokerUrl, config.resultBackend])
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(LOG_FORMAT, secrets))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    namespaces = args.namespace or config.namespaces
    # Kopf serves a glob by following the namespaces and watching each that matches;
    # a namespace created while it starts can fall between its first listing and its
    # watch, and is never served.  A glob is served by one cluster-wide watch instead,
    # the tracker keeping what matches.
    clusterwide = not namespaces or globbed(namespaces)
    # Kopf has no hook before its per-event work: its watcher reads this stream.
    echoes = Echoes()
    watching.infinite_watch = without_echoes(watching.infinite_watch, echoes)
    if config.metricsPort is not None:
        metrics.serve(config.metricsHost, config.metricsPort)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=clusterwide,
            namespaces=[] if clusterwide else namespaces,
            memo=kopf.Memo(config=config, namespaces=namespaces, echoes=echoes),
            memories=Forgetful(),
            liveness_endpoint=args.liveness,
        )
    )


if __name__ == "__main__":
    main()
