"""`celery-taskrun-gateway`: the gateway's command (uvicorn serving the FastAPI app)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn

from celery_taskrun.clients.apiserver import ApiServer, connect
from celery_taskrun.clients.taskruns import REQUEST_TIMEOUT
from celery_taskrun.core.redact import RedactingFormatter
from celery_taskrun.gateway.app import create_app
from celery_taskrun.gateway.state import Settings

DEFAULT_PORT = 8080
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULTS = Settings()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="celery-taskrun-gateway",
        description="HTTP and WebSocket API over TaskRuns, and a live page.",
    )
    parser.add_argument(
        "--host",
        default=env("TASKRUN_GATEWAY_HOST", "127.0.0.1"),
        help="listen address (default $TASKRUN_GATEWAY_HOST or 127.0.0.1; 0.0.0.0 in a pod)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env("TASKRUN_GATEWAY_PORT", DEFAULT_PORT)),
        help=f"listen port (default $TASKRUN_GATEWAY_PORT or {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--kubeconfig",
        help="the gateway's own credentials (default $KUBECONFIG, else in-cluster)",
    )
    parser.add_argument(
        "--token-audience",
        dest="audiences",
        action="append",
        default=[a for a in env("TASKRUN_GATEWAY_TOKEN_AUDIENCES", "").split(",") if a],
        metavar="AUDIENCE",
        help="accept only callers' tokens issued for this audience (repeatable; default "
        "$TASKRUN_GATEWAY_TOKEN_AUDIENCES, comma-separated; none: the API server's own)",
    )
    parser.add_argument(
        "--max-followers",
        type=int,
        default=int(env("TASKRUN_GATEWAY_MAX_FOLLOWERS", DEFAULTS.max_followers)),
        help="waits and streams open at once, in all; then 503 (default "
        f"$TASKRUN_GATEWAY_MAX_FOLLOWERS or {DEFAULTS.max_followers})",
    )
    parser.add_argument(
        "--max-followers-per-caller",
        type=int,
        default=int(
            env("TASKRUN_GATEWAY_MAX_FOLLOWERS_PER_CALLER", DEFAULTS.max_followers_per_caller)
        ),
        help="waits and streams open at once per caller (username); then 429 (default "
        f"$TASKRUN_GATEWAY_MAX_FOLLOWERS_PER_CALLER or {DEFAULTS.max_followers_per_caller})",
    )
    parser.add_argument(
        "--recheck-seconds",
        type=float,
        default=float(env("TASKRUN_GATEWAY_RECHECK_SECONDS", DEFAULTS.recheck_seconds)),
        help="how often a stream checks its caller's token and rights again, closing when "
        f"they lapse (default $TASKRUN_GATEWAY_RECHECK_SECONDS or {DEFAULTS.recheck_seconds:g})",
    )
    parser.add_argument(
        "--watch-linger-seconds",
        type=float,
        default=float(env("TASKRUN_GATEWAY_WATCH_LINGER_SECONDS", DEFAULTS.watch_linger_seconds)),
        help="how long a namespace's API-server watch outlives its last wait or stream "
        f"(default $TASKRUN_GATEWAY_WATCH_LINGER_SECONDS or {DEFAULTS.watch_linger_seconds:g})",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="log at debug level (tokens masked)"
    )
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings(
        max_followers=args.max_followers,
        max_followers_per_caller=args.max_followers_per_caller,
        recheck_seconds=args.recheck_seconds,
        watch_linger_seconds=args.watch_linger_seconds,
        audiences=tuple(args.audiences),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_of(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    # Libraries logging at debug level quote requests' headers and bodies: tokens.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(LOG_FORMAT))

    async def connector() -> ApiServer:
        return connect(args.kubeconfig, seconds=REQUEST_TIMEOUT)

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(connector, settings),
            host=args.host,
            port=args.port,
            lifespan="on",
            http="httptools",
            loop="uvloop",
            ws="websockets-sansio",
            # Nothing the gateway reads from a WebSocket is larger than a ping.
            ws_max_size=64 * 1024,
            access_log=args.access_log,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=5,
            # Beyond every wait and stream the gateway allows, and some: then 503s.
            limit_concurrency=settings.max_followers + 200,
            timeout_graceful_shutdown=5,
            log_config=None,
        )
    )
    server.run()
    if not server.started:
        sys.exit(1)


if __name__ == "__main__":
    main()
