"""`taskrun-dev up|down|status|logs`: a thin shell over taskrun_dev.stack.Stack.

Progress goes to stderr; `up` prints the env.sh path as its last stdout line, so
`. "$(taskrun-dev up | tail -n1)"` sets up a shell.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from taskrun_dev.processes import StackError, tail
from taskrun_dev.services import BACKENDS, BROKERS, REDIS
from taskrun_dev.stack import Stack, default_dir


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="state directory (default $TASKRUN_DEV_DIR or ./.taskrun-dev)",
    )
    parser = argparse.ArgumentParser(
        prog="taskrun-dev",
        description="Local celery-taskrun stack: kube-apiserver + etcd, kube-controller-manager, "
        "the broker and result backend, worker, operator.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common], help="start the stack (idempotent)")
    up.add_argument("--no-operator", action="store_true", help="do not start the operator")
    up.add_argument("--no-worker", action="store_true", help="do not start the Celery worker")
    up.add_argument(
        "--broker",
        choices=BROKERS,
        default=REDIS,
        help="the broker the stack runs on loopback (default redis; rabbitmq: Debian's "
        "rabbitmq-server); CELERY_BROKER_URL in env.sh",
    )
    up.add_argument(
        "--backend",
        choices=BACKENDS,
        default=REDIS,
        help="the result backend (default redis; postgresql: Debian's postgresql; sqlite: a "
        "file in the state directory); CELERY_RESULT_BACKEND in env.sh",
    )
    up.add_argument(
        "--worker-imports",
        type=_csv,
        default=[],
        metavar="MOD1,MOD2",
        help="extra task modules for the worker (env TASKRUN_WORKER_IMPORTS)",
    )
    up.add_argument(
        "--operator-config", type=Path, default=None, help="operator YAML config (TASKRUN_CONFIG)"
    )
    up.add_argument(
        "--gateway",
        action="store_true",
        help="also start the gateway (HTTP API and live page); its URL goes into env.sh",
    )
    up.add_argument(
        "--audit-log",
        action="store_true",
        help="the API server logs every write (Metadata level, JSON lines) to "
        "DIR/audit/audit.log; its path goes into env.sh as TASKRUN_AUDIT_LOG",
    )
    up.add_argument(
        "--examples",
        action="store_true",
        help="apply deploy/examples/*.yaml, wait for them, print the TaskRuns",
    )

    down = sub.add_parser("down", parents=[common], help="stop everything the stack started")
    down.add_argument(
        "--purge", action="store_true", help="also delete etcd data, certificates and logs"
    )
    down.add_argument(
        "--timeout", type=float, default=None, help="seconds before SIGKILL (default 10, API 3)"
    )

    sub.add_parser("status", parents=[common], help="show the stack's processes")
    sub.add_parser(
        "build",
        parents=[common],
        help="build the control-plane binaries with Go (or find them); print their dir",
    )

    logs = sub.add_parser("logs", parents=[common], help="print the tail of a process's log")
    logs.add_argument("name", help="process name, e.g. kube-apiserver, worker1, operator")
    logs.add_argument("-n", "--lines", type=int, default=40)
    return parser


def _status_table(stack: Stack) -> str:
    rows = [("NAME", "PID", "ALIVE", "PORT", "LOG")]
    for item in stack.status():
        rows.append(
            (
                str(item["name"]),
                str(item["pid"]),
                "yes" if item["alive"] else "NO",
                str(item["port"] or "-"),
                str(item["log"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stack = Stack(args.dir or default_dir(), audit=getattr(args, "audit_log", False))
    try:
        if args.command == "up":
            if stack.running():
                stack.say(f"stack already running in {stack.dir}")
            stack.up(
                operator=not args.no_operator,
                worker=not args.no_worker,
                worker_imports=args.worker_imports,
                operator_config=args.operator_config,
                gateway=args.gateway,
                broker=args.broker,
                backend=args.backend,
            )
            print(_status_table(stack), file=sys.stderr)
            if args.examples:
                if args.no_operator or args.no_worker:
                    stack.say("warning: --examples needs the operator and a worker to finish")
                print(stack.run_examples(), end="")
            print(stack.env_file, flush=True)
        elif args.command == "down":
            stopped = stack.down(timeout=args.timeout, purge=args.purge)
            stack.say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
        elif args.command == "status":
            if not stack.status():
                print(f"nothing running in {stack.dir}")
                return 0
            print(_status_table(stack))
            if not all(item["alive"] for item in stack.status()):
                return 1
        elif args.command == "build":
            print(stack.binaries.dir)
        elif args.command == "logs":
            log = stack.logs_dir / f"{args.name}.log"
            if not log.is_file():
                print(f"no log {log}", file=sys.stderr)
                return 1
            print(tail(log, args.lines))
    except StackError as exc:
        print(f"taskrun-dev: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("taskrun-dev: interrupted; `taskrun-dev down` stops what started", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
