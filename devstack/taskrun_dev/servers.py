"""The broker and result backend servers besides Redis: RabbitMQ (with an epmd of its
own) and PostgreSQL, from their Debian packages. Command lines, environments and
readiness checks; `services.Services` runs them as processes of the stack.

Neither is the system service the Debian package installs: each runs as a process of the
stack, on loopback ports the stack chose, with its configuration, data and logs in the
stack's directory, so two stacks (and a system service, if one runs) never meet.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import amqp
import psycopg

from taskrun_dev.processes import StackError, free_port, wait_until

HOST = "127.0.0.1"
# Process names, also their ports' keys in stack.json.
RABBITMQ = "rabbitmq"
EPMD = "epmd"
POSTGRESQL = "postgresql"
SQLITE = "sqlite"

# RabbitMQ's built-in user, which it lets in from loopback only.
RABBITMQ_USER = "guest"
RABBITMQ_NODE = "taskrun@localhost"
POSTGRES_USER = "taskrun"
POSTGRES_DB = "taskrun"


def _install_hint(what: str, package: str) -> str:
    return (
        f"{what} not found: install it with `apt-get install {package}` (the Debian "
        "package), or `devstack/setup.sh --for-tests`"
    )


# -- RabbitMQ ------------------------------------------------------------------


def rabbitmq_server() -> str:
    # Debian's /usr/sbin/rabbitmq-server (the one on PATH) switches to the system
    # `rabbitmq` user and /var/lib/rabbitmq; the script it wraps runs as the caller
    # with the environment below.
    debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if debian.is_file():
        return str(debian)
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise StackError(_install_hint("rabbitmq-server", "rabbitmq-server"))
    return found


def epmd_argv(port: int) -> list[str]:
    # Erlang's port mapper, run by the stack rather than by the node (which would start
    # one detached, outside any process group, on the shared default port 4369).
    epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    if not os.access(epmd, os.X_OK):
        raise StackError(_install_hint("epmd", "rabbitmq-server"))
    return [epmd, "-port", str(port), "-address", HOST]


def rabbitmq_config(data_dir: Path, port: int) -> Path:
    """Write the node's rabbitmq.conf (AMQP on loopback only, logs to stdout) and an
    empty plugin list (the management plugin would listen on 0.0.0.0:15672)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "rabbitmq.conf"
    config.write_text(
        f"listeners.tcp.default = {HOST}:{port}\n"
        "log.console = true\n"
        "log.console.level = info\n"
        "log.file = false\n"
    )
    (data_dir / "enabled_plugins").write_text("[].\n")
    return config


def rabbitmq_env(data_dir: Path, dist_port: int, epmd_port: int) -> dict[str, str]:
    """The node's settings: every path in `data_dir`, none of /etc/rabbitmq's files."""
    return {
        # Where Erlang keeps .erlang.cookie, the secret the node's CLI tools share.
        "HOME": str(data_dir),
        "ERL_EPMD_ADDRESS": HOST,
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_NODENAME": RABBITMQ_NODE,
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_CONF_ENV_FILE": str(data_dir / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(data_dir / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(data_dir / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(data_dir / "enabled_plugins"),
        "RABBITMQ_BASE": str(data_dir),
        "RABBITMQ_MNESIA_BASE": str(data_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(data_dir / "log"),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_PID_FILE": str(data_dir / "rabbitmq.pid"),
        # The node uses the stack's epmd, and its distribution port listens on loopback.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
            "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
        ),
    }


def rabbitmq_url(port: int) -> str:
    return f"amqp://{RABBITMQ_USER}:{RABBITMQ_USER}@{HOST}:{port}//"


def amqp_answers(port: int) -> bool:
    """An AMQP connection opens: the node booted and listens (it listens last)."""
    connection = amqp.Connection(
        host=f"{HOST}:{port}",
        userid=RABBITMQ_USER,
        password=RABBITMQ_USER,
        connect_timeout=1,
        read_timeout=2,
        write_timeout=2,
    )
    try:
        connection.connect()
    except (OSError, amqp.exceptions.AMQPError):
        return False
    connection.close()
    return True


# -- PostgreSQL ----------------------------------------------------------------


def postgres_program(name: str) -> str:
    """initdb or postgres: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if not versions:
        raise StackError(_install_hint(name, "postgresql"))
    return max(versions, key=lambda path: int(Path(path).parts[-3]))


def unprivileged(argv: list[str]) -> list[str]:
    """`argv` as PostgreSQL accepts to run it.

    It refuses root. In a user namespace of its own with no user mapped it sees itself as
    `nobody` while the kernel still checks its files as the caller's, so the data stays in
    the stack's directory whatever that directory's permissions, with no account to make.
    """
    if os.geteuid() != 0:
        return argv
    unshare = shutil.which("unshare")
    if unshare is None:
        raise StackError("PostgreSQL refuses to run as root, and `unshare` is not on PATH")
    return [unshare, "--user", *argv]


def initdb(data_dir: Path, timeout: float = 120.0) -> None:
    """Make the database cluster in `data_dir` unless it is there already."""
    if (data_dir / "PG_VERSION").is_file():
        return
    shutil.rmtree(data_dir, ignore_errors=True)  # what an interrupted initdb left
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    argv = unprivileged(
        [
            postgres_program("initdb"),
            "-D",
            str(data_dir),
            "-U",
            POSTGRES_USER,
            # Loopback only, and a dev stack's data: as Redis, no password.
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise StackError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def postgres_argv(data_dir: Path, port: int) -> list[str]:
    return unprivileged(
        [
            postgres_program("postgres"),
            "-D",
            str(data_dir),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={HOST}",
            # TCP alone: no socket in /var/run/postgresql beside a system cluster's.
            "-c",
            "unix_socket_directories=",
            # A dev stack's data, as etcd's --unsafe-no-fsync.
            "-c",
            "fsync=off",
        ]
    )


def postgresql_url(port: int) -> str:
    return f"db+postgresql://{POSTGRES_USER}@{HOST}:{port}/{POSTGRES_DB}"


def _connect(port: int, database: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=HOST, port=port, user=POSTGRES_USER, dbname=database, connect_timeout=2
    )


def postgres_answers(port: int) -> bool:
    """A session opens: the server accepts connections (recovery done)."""
    try:
        _connect(port, "postgres").close()
    except psycopg.Error:
        return False
    return True


def ensure_database(port: int) -> None:
    """The stack's database (Celery makes its tables in it on first use)."""
    with _connect(port, "postgres") as connection:
        # CREATE DATABASE cannot run inside a transaction.
        connection.autocommit = True
        found = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (POSTGRES_DB,)
        ).fetchone()
        if found is None:
            connection.execute(f"CREATE DATABASE {POSTGRES_DB}")


@contextlib.contextmanager
def throwaway_postgres(
    data_dir: Path, settings: Sequence[str] = (), timeout: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A PostgreSQL of its own for a test or a benchmark (no stack): its `db+` URL and
    its postmaster, stopped (with every backend) on the way out.  `settings`: more
    `-c name=value` for the server."""
    initdb(data_dir)
    port = free_port(HOST)
    argv = postgres_argv(data_dir, port)
    for setting in settings:
        argv += ["-c", setting]
    log = (data_dir.parent / f"{data_dir.name}.log").open("wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:

        def dead() -> str | None:
            return None if server.poll() is None else f"postgres exited ({server.returncode})"

        if not wait_until(
            lambda: postgres_answers(port), timeout=timeout, interval=0.1, abort=dead
        ):
            raise StackError(f"postgres did not accept sessions within {timeout:.0f}s")
        ensure_database(port)
        yield postgresql_url(port), server
    finally:
        server.send_signal(signal.SIGINT)  # a fast shutdown: clients still connected go
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout)
        log.close()


# -- SQLite --------------------------------------------------------------------


def sqlite_url(path: Path) -> str:
    return f"db+sqlite:///{path}"
