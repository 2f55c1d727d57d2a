"""`kubectl-taskrun` (also `kubectl taskrun`): run, wait, result, cancel, get, describe;
and for CronTaskRuns: trigger, suspend, resume.

Talks to the API server as the user (their kubeconfig), never through the gateway;
waits follow the API server's watch. Exit codes: 0 Succeeded, 1 Failed, 3 TimedOut,
4 Revoked, 124 the wait ran out (the run goes on), 2 usage or refused by the API server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml

from celery_taskrun.api.bodies import TaskRunBody
from celery_taskrun.api.cron import PLURAL as CRON_PLURAL
from celery_taskrun.cli import render
from celery_taskrun.cli.parsing import UsageError, build_spec, parse_duration
from celery_taskrun.clients.apiserver import connect
from celery_taskrun.clients.errors import KubeError
from celery_taskrun.clients.taskruns import REQUEST_TIMEOUT, TaskRunClient, wait
from celery_taskrun.core.cron_step import cron_view, run_body
from celery_taskrun.core.outcomes import ExitCode, exit_code, finished, status_of

PROG = "kubectl-taskrun"
COMMANDS = ("run", "wait", "result", "cancel", "get", "describe", "trigger", "suspend", "resume")
CRON_COMMANDS = ("trigger", "suspend", "resume")
# `get` without a name pages through the namespace this many at a time.
PAGE = 500


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _connection_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "-n", "--namespace", default=default, help="default: the current context's namespace"
    )
    parser.add_argument("--kubeconfig", default=default, help="default: $KUBECONFIG")
    parser.add_argument("--context", default=default, help="a kubeconfig context")


def _wait_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--for",
        dest="wait_for",
        type=_duration,
        metavar="DURATION",
        help="wait at most this long (seconds, or 30s, 2m); default: until the run ends",
    )


def top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run Celery tasks as TaskRuns and wait for their outcome.",
        epilog="Exit codes: 0 Succeeded, 1 Failed, 3 TimedOut, 4 Revoked, "
        "124 the wait ran out (the run goes on), 2 usage or refused by the API server.",
    )
    _connection_flags(parser, None)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the command's arguments")
    return parser


def command_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"kubectl taskrun {command}")
    _connection_flags(parser, argparse.SUPPRESS)
    if command == "run":
        parser.description = "Create a TaskRun (the seed's delay()); --wait: and get(timeout)."
        parser.add_argument("task", help="the Celery task name")
        parser.add_argument(
            "args", nargs="*", metavar="ARG", help="JSON when it parses as JSON, else a string"
        )
        parser.add_argument(
            "--kwarg", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
        )
        parser.add_argument("--queue")
        parser.add_argument("--priority", type=int)
        parser.add_argument("--countdown", type=_duration, metavar="S")
        parser.add_argument("--expires", type=_duration, metavar="S")
        parser.add_argument("--timeout", type=_duration, metavar="S", help="the run's deadline")
        parser.add_argument("--time-limit", type=_duration, metavar="S")
        parser.add_argument("--soft-time-limit", type=_duration, metavar="S")
        parser.add_argument("--retries", type=int, metavar="N")
        parser.add_argument(
            "--concurrency-key", metavar="KEY", help="what `per: key` concurrency groups count by"
        )
        parser.add_argument("--name", help="default: generated from the task name")
        parser.add_argument(
            "--wait", action="store_true", help="wait for the outcome; print the result"
        )
        _wait_flag(parser)
    elif command == "get":
        parser.add_argument("name", nargs="?", help="default: every TaskRun of the namespace")
        parser.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    elif command in CRON_COMMANDS:
        parser.description = {
            "trigger": "Make a run of a CronTaskRun now, from its template; --wait: and wait.",
            "suspend": "Stop a CronTaskRun making runs (those running go on).",
            "resume": "Let a suspended CronTaskRun make runs again, from its next slot.",
        }[command]
        parser.add_argument("name", metavar="CRON", help="the CronTaskRun")
        if command == "trigger":
            parser.add_argument("--wait", action="store_true", help="wait for the outcome")
            _wait_flag(parser)
    else:
        parser.add_argument("name")
        if command == "wait":
            _wait_flag(parser)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Both levels: connection flags may come before or after the command."""
    top = top_parser().parse_args(argv)
    options = command_parser(top.command).parse_intermixed_args(top.rest)
    for key in ("namespace", "kubeconfig", "context"):
        if not hasattr(options, key):
            setattr(options, key, getattr(top, key))
    options.command = top.command
    return options


def _say(text: str, stream: TextIO = sys.stderr) -> None:
    print(text, file=stream, flush=True)


def report(name: str, obj: TaskRunBody, done: bool, waited: float | None) -> ExitCode:
    """Print what a waiter learns: the result on stdout, anything else on stderr."""
    status = status_of(obj)
    if not done:
        _say(render.ran_out_text(name, status, waited))
        return ExitCode.WAIT_RAN_OUT
    code = exit_code(status)
    if code is ExitCode.SUCCEEDED:
        _say(render.result_json(status), sys.stdout)
        note = render.truncation_note(name, status)
        if note:
            _say(note)
    else:
        _say(render.error_text(name, status, traceback=False))
    return code


async def _wait_and_report(
    runs: TaskRunClient, namespace: str, name: str, seconds: float | None
) -> ExitCode:
    obj, done = await wait(runs, namespace, name, seconds)
    return report(name, obj, done, seconds)


async def _get(runs: TaskRunClient, namespace: str, options: argparse.Namespace) -> ExitCode:
    if options.name:
        objs = [await runs.get(namespace, options.name)]
    else:
        objs, token = [], None
        while True:
            page = await runs.page(namespace, limit=PAGE, continue_token=token)
            objs += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
    if options.output == "json":
        shown: Any = objs[0] if options.name else {"items": objs}
        _say(json.dumps(shown, indent=2, ensure_ascii=False), sys.stdout)
    elif options.output == "yaml":
        shown = objs[0] if options.name else {"items": objs}
        _say(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True).rstrip(), sys.stdout)
    elif objs:
        _say(render.table(objs, datetime.now(UTC)), sys.stdout)
    else:
        _say(f"No TaskRuns in namespace {namespace}.")
    return ExitCode.SUCCEEDED


async def _cron(runs: TaskRunClient, namespace: str, options: argparse.Namespace) -> ExitCode:
    name = options.name
    if options.command != "trigger":
        suspend = options.command == "suspend"
        await runs.patch_spec(namespace, name, {"suspend": suspend}, plural=CRON_PLURAL)
        _say(f"crontaskrun/{name} {'suspended' if suspend else 'resumed'}", sys.stdout)
        return ExitCode.SUCCEEDED
    view = cron_view(await runs.get(namespace, name, plural=CRON_PLURAL))
    if view.spec is None:
        raise UsageError(f"crontaskrun/{name} cannot make runs: {view.invalid}")
    now = int(datetime.now(UTC).timestamp())
    created = await runs.create_body(run_body(view, f"{name}-manual-{now}", now))
    return await _made(runs, namespace, created, options)


async def _made(
    runs: TaskRunClient, namespace: str, created: TaskRunBody, options: argparse.Namespace
) -> ExitCode:
    """A run just created: its name, or with --wait (--for) its outcome."""
    name = render.name_of(created)
    if not (options.wait or options.wait_for is not None):
        _say(name, sys.stdout)
        return ExitCode.SUCCEEDED
    _say(f"taskrun/{name} created")
    return await _wait_and_report(runs, namespace, name, options.wait_for)


async def execute(options: argparse.Namespace) -> ExitCode:
    spec = None
    if options.command == "run":
        # Validated before connecting: a bad spec never reaches the API server.
        spec = build_spec(
            options.task,
            options.args,
            options.kwarg,
            {
                "queue": options.queue,
                "priority": options.priority,
                "countdown": options.countdown,
                "expires": options.expires,
                "timeout": options.timeout,
                "timeLimit": options.time_limit,
                "softTimeLimit": options.soft_time_limit,
                "retries": options.retries,
                "concurrencyKey": options.concurrency_key,
            },
        )
    api = connect(options.kubeconfig, options.context, seconds=REQUEST_TIMEOUT)
    runs = TaskRunClient(api)
    namespace = options.namespace or api.namespace
    try:
        if spec is not None:
            created = await runs.create(namespace, spec, name=options.name)
            return await _made(runs, namespace, created, options)
        if options.command == "wait":
            return await _wait_and_report(runs, namespace, options.name, options.wait_for)
        if options.command == "result":
            return await _wait_and_report(runs, namespace, options.name, 0)
        if options.command == "get":
            return await _get(runs, namespace, options)
        if options.command in CRON_COMMANDS:
            return await _cron(runs, namespace, options)
        obj = await runs.get(namespace, options.name)
        if options.command == "describe":
            _say(render.describe(obj, datetime.now(UTC)), sys.stdout)
            return ExitCode.SUCCEEDED
        # cancel
        status = status_of(obj)
        if finished(status):
            _say(f"taskrun/{options.name} already finished: {status.get('phase')}")
        else:
            await runs.cancel(namespace, options.name)
            _say(f"taskrun/{options.name} cancel requested", sys.stdout)
        return ExitCode.SUCCEEDED
    finally:
        await runs.close()


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(sys.argv[1:] if argv is None else argv)  # argparse exits 2 on misuse
    try:
        code: int = asyncio.run(execute(options))
    except UsageError as exc:
        _say(f"{PROG}: error: {exc}")
        code = ExitCode.USAGE
    except KubeError as exc:
        if exc.status:
            _say(f"{PROG}: error: the API server refused ({exc.status} {exc.reason}): {exc}")
        else:
            _say(f"{PROG}: error: {exc}")
        code = ExitCode.USAGE
    except KeyboardInterrupt:
        code = 130
    sys.exit(int(code))


if __name__ == "__main__":
    main()
