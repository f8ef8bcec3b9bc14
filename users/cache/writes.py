"""A write's change in Redis, node by node: its keys deleted with their leases,
and a saved row's entry stored under the write's own lease
(``scripts.FILL_OR_DELETE``); confirmed by a replica where a node has one. The
near cache's part of a write is the store's (``store.write``), which calls this.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time
from collections.abc import Hashable, Sequence

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from ..conf import user_cache_settings
from . import scripts
from .cluster import slot_groups
from .keys import lease_key
from .kinds import CachedKind, Entry
from .replication import execute_replicated
from .scripts import evalsha
from .transport import UNAVAILABLE, CacheUnavailable, call, client, execute_many, node_of, reaching


def jittered_ttl_ms(seconds: int) -> int:
    """An entry's TTL: ``seconds`` shortened by up to ``TTL_JITTER``, so that entries
    written together do not all expire together."""
    jitter = user_cache_settings.TTL_JITTER
    return int(seconds * 1000 * (1 - jitter * random.random()))


class Missed(CacheUnavailable):
    """A change some keys' nodes did not take, or, after a commit, that no replica
    confirmed: ``keys``, which the caller leaves to the outbox. The other keys
    were applied."""

    def __init__(self, keys: list[str], reasons: list[str]) -> None:
        super().__init__(f"{len(keys)} key(s) left to the outbox: {'; '.join(reasons)}")
        self.keys = keys


def change(keys: Sequence[str], fill: WriteFill | None, *, after_commit: bool) -> bool:
    """``store.write``'s and ``store.invalidate``'s change in Redis, node by node
    (the near cache is the store's)."""
    filled_key = None if fill is None else fill.kind.key(fill.ident)
    stored, missed, reasons = False, [], []
    for node, node_keys in _by_node([*keys, *([filled_key] if filled_key else [])]).items():
        node_fill = fill if filled_key in node_keys else None
        try:
            written, confirmed = call(
                lambda redis, node=node, node_keys=node_keys, node_fill=node_fill: _write(
                    redis, node, node_keys, node_fill, confirm=after_commit
                ),
                keys=node_keys,
                probe=after_commit,
            )
        except CacheUnavailable as exc:
            missed += node_keys
            reasons.append(str(exc))
            continue
        stored = stored or written
        if not confirmed:
            missed += node_keys
            reasons.append(f"no replica of {node} confirmed")
    if missed:
        raise Missed(missed, reasons)
    return stored


def _by_node(keys: Sequence[str]) -> dict[str, list[str]]:
    """``keys`` (each once) by the node that serves them; on a single server, one
    group. Keys whose slot no node serves (during a failover) make a group of
    their own, whose call fails: they are missed."""
    redis = client()
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for key in dict.fromkeys(keys):
        try:
            groups[node_of(redis, key)].append(key)
        except UNAVAILABLE:
            groups[""].append(key)
    return groups


@dataclasses.dataclass(frozen=True, slots=True)
class WriteFill:
    """An entry a write stores after its commit: its kind, ident and row, under the
    lease ``token`` the write took inside its transaction."""

    kind: CachedKind
    ident: Hashable
    entry: Entry
    token: str


def _write(
    redis: Redis | RedisCluster, node: str, keys: Sequence[str], fill: WriteFill | None,
    *, confirm: bool,
) -> tuple[bool, bool]:  # fmt: skip
    """One node's DELs (one per hash slot: a cluster refuses a command over
    several) and fill, in one round trip, followed, with ``confirm``, by the wait
    for a replica: whether the fill stored, and whether a replica has the change
    (or none needs to)."""
    filled_key = None if fill is None else fill.kind.key(fill.ident)
    deleted = [name for key in keys if key != filled_key for name in (key, lease_key(key))]
    commands = [("DEL", *(deleted[i] for i in group)) for group in slot_groups(redis, deleted)]
    if fill is not None:
        ttl_ms = jittered_ttl_ms(fill.kind.ttl())
        entry = fill.kind.codec.close(fill.ident, fill.entry, expires=time.time() + ttl_ms / 1000)
        args = [fill.token, ttl_ms, *(item for pair in entry.items() for item in pair)]
        commands.append(
            evalsha(scripts.FILL_OR_DELETE, [filled_key, lease_key(filled_key)], args)
        )
    if not commands:
        return False, True
    replies, confirmed = _send_write(redis, node, commands, confirm=confirm)
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return fill is not None and bool(replies[-1]), confirmed


def _send_write(
    redis: Redis | RedisCluster, node: str, commands: Sequence[tuple], *, confirm: bool
) -> tuple[list, bool]:
    """The write's commands on one connection of the node (a WAIT must follow the
    writes on their connection). On a cluster, commands the node redirects, or
    all of them when it refuses the connection (a failover, a resharding), go
    through the cluster client instead, which follows the slots to their new
    node and maps them again; a replica cannot have confirmed those."""
    server = redis.get_redis_connection(redis.get_node(node_name=node)) if isinstance(
        redis, RedisCluster
    ) else redis  # fmt: skip
    try:
        with reaching(node):
            if confirm:
                replies, confirmed = execute_replicated(server, commands)
            else:
                replies, confirmed = execute_many(server, commands), True
    except RedisConnectionError:
        if server is redis:
            raise
        replies, confirmed = [], False
    if server is redis or (replies and not any(isinstance(r, AskError) for r in replies)):
        return replies, confirmed
    return execute_many(redis, commands), not confirm
