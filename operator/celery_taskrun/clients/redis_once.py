"""Queueing a task at most once on a Redis broker, however an earlier attempt ended.

A publish that timed out may still land: its bytes left, Redis was stalled (a fork
for a snapshot, a paused VM, swapping) and runs the command when it wakes.  A resend of
the same task id, however careful (it reads the result backend first, and a task
still queued behind busy workers has no record yet), would then queue it twice, and a
plain worker runs both.  So a TaskRun's message goes in one Lua script with a marker
of its task id: it is pushed only when the marker was not there, and any later
attempt of the same id, by this operator or another, pushes nothing.  Redis runs a
script whole, so the marker and the message land together or not at all.

The transports are kombu's own with this one difference; `make_app` selects them for
`redis://`, `rediss://` and `sentinel://` broker URLs.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis
from kombu.utils.json import dumps

from celery_taskrun.core.sending import TASK_ID_PREFIX

# KEYS: the queue's list, the marker.  ARGV: the message, the marker's lifetime (s).
PUSH_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('LPUSH', KEYS[1], ARGV[1])
    return 1
end
return 0
"""
MARKER_PREFIX = "celery-taskrun-sent-"
# As long as Celery keeps a result by default (result_expires): an operator resends an
# id only while its run is in flight and its outcome is unknown, within minutes.
MARKER_SECONDS = 86_400


class _Once:
    """The channel's `_put`, for our task ids: the message with its marker, once."""

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        task_id = (message.get("headers") or {}).get("id")
        channel: Any = self
        if not (isinstance(task_id, str) and task_id.startswith(TASK_ID_PREFIX)):
            super()._put(queue, message, **kwargs)  # type: ignore[misc]
            return
        key = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
        with channel.conn_or_acquire() as client:
            marker = MARKER_PREFIX + task_id
            payload = dumps(message)  # type: ignore[no-untyped-call]
            client.eval(PUSH_ONCE, 2, key, marker, payload, MARKER_SECONDS)
            if channel._expires and queue in channel._expires:  # a queue with x-expires
                for step in channel.priority_steps:
                    client.pexpire(channel._q_for_pri(queue, step), channel._expires[queue])


class Channel(_Once, redis.Channel):
    pass


class SentinelChannel(_Once, redis.SentinelChannel):
    pass


class Transport(redis.Transport):
    Channel = Channel


class SentinelTransport(redis.SentinelTransport):
    Channel = SentinelChannel


# The transport each broker URL scheme takes for sending.
BY_SCHEME = {
    "redis": f"{__name__}:Transport",
    "rediss": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}
