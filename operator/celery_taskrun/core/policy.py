"""Who may run what (pure): the operator's `allowedTasks` and `policies`.

A TaskRun is allowed when its task is in `allowedTasks` (if set) and a policy matching
its namespace allows both its task and its queue (no `spec.queue`: the default
queue).  With no policies at all every namespace may run any task on any queue, but
Celery's built-ins (`celery.chain`, `celery.group`, ...: tasks that run other tasks)
are refused unless a policy names them with a pattern starting `celery.`.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from celery_taskrun.api.config import OperatorConfig, Policy

BUILTIN_PREFIX = "celery."


def matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def allows_task(policy: Policy, task: str) -> bool:
    """A built-in only by a pattern that names built-ins, never by `*` alone."""
    if task.startswith(BUILTIN_PREFIX):
        named = [p for p in policy.tasks if p.startswith(BUILTIN_PREFIX)]
        return matches(task, named)
    return matches(task, policy.tasks)


def describe(index: int, policy: Policy) -> str:
    return (
        f"policies[{index}] (namespaces {policy.namespaces}) allows tasks {policy.tasks} "
        f"on queues {policy.queues}"
    )


def refusal(config: OperatorConfig, namespace: str, task: str, queue: str | None) -> str | None:
    """Why a TaskRun may not run, naming the rule; None when it may."""
    if config.allowedTasks and not matches(task, config.allowedTasks):
        return f"task {task!r} is not in the operator's allowedTasks {config.allowedTasks}"
    queue = queue or config.defaultQueue
    if not config.policies:
        if task.startswith(BUILTIN_PREFIX):
            return (
                f"task {task!r} is one of Celery's built-ins (celery.*), refused unless a "
                "policy names it"
            )
        return None
    covering = [(i, p) for i, p in enumerate(config.policies) if matches(namespace, p.namespaces)]
    if not covering:
        return f"no policy covers namespace {namespace!r}"
    for _, policy in covering:
        if allows_task(policy, task) and matches(queue, policy.queues):
            return None
    rules = "; ".join(describe(i, p) for i, p in covering[:3])
    return f"task {task!r} on queue {queue!r} is not allowed in namespace {namespace!r}: {rules}"
