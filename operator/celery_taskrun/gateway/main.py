"""`celery-taskrun-gateway`: the gateway's command (uvicorn serving the FastAPI app)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn
from kubernetes_asyncio import client

from celery_taskrun.clients.transport import connect
from celery_taskrun.gateway.app import MAX_FOLLOWERS, create_app

DEFAULT_PORT = 8080


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="celery-taskrun-gateway",
        description="HTTP and WebSocket API over TaskRuns, and a live page.",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("TASKRUN_GATEWAY_HOST", "127.0.0.1"),
        help="listen address (default $TASKRUN_GATEWAY_HOST or 127.0.0.1; 0.0.0.0 in a pod)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("TASKRUN_GATEWAY_PORT", DEFAULT_PORT)),
        help=f"listen port (default $TASKRUN_GATEWAY_PORT or {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--kubeconfig",
        help="the gateway's own credentials (default $KUBECONFIG, else in-cluster)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def connector() -> client.ApiClient:
        api, _ = await connect(args.kubeconfig)
        return api

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(connector),
            host=args.host,
            port=args.port,
            lifespan="on",
            ws="websockets-sansio",
            # Nothing the gateway reads from a WebSocket is larger than a ping.
            ws_max_size=64 * 1024,
            access_log=args.access_log,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=5,
            # Beyond every wait and stream the gateway allows, and some: then 503s.
            limit_concurrency=MAX_FOLLOWERS + 200,
            timeout_graceful_shutdown=5,
            log_config=None,
        )
    )
    server.run()
    if not server.started:
        sys.exit(1)


if __name__ == "__main__":
    main()
