"""What operators see of the login limits and lift: every counter at or over its
limit (``lockouts``, for ``manage.py unlock_login --list`` and the admin's page),
and the removal of an account's or an address's counters (``unlock``). Apart
from ``limits``, which counts attempts on the login path: this reads Redis's
index of lockouts and needs Redis, where counting does not.
"""

from __future__ import annotations

import dataclasses
import datetime

from .. import identity
from ..cache import counters
from ..cache.counters import EventRecord
from ..cache.keys import LoginCounter, login_key_parts, login_lockouts_key
from . import addresses, memory
from .accounts import account_key
from .limits import ACCOUNT, ADDRESS, COUNTER_KINDS, counter_key, limit_of, listed_for_ms, now_ms


@dataclasses.dataclass(frozen=True, slots=True)
class Lockout:
    """A counter at or over its limit, or one an operator removed."""

    kind: str  # ACCOUNT or ADDRESS
    subject: str  # what unlock takes: the account's digest, or the address group
    shown: str  # the name as first typed (escaped), or the address group
    counted: str  # "failures" or "attempts"
    count: int
    since: datetime.datetime  # when it reached its limit (its first event, if below it)
    until: datetime.datetime | None  # when it ends; None: it has no expiry

    def describe(self) -> str:
        until = "never" if self.until is None else _when(self.until)
        return (
            f"{self.kind} {self.shown}: {self.count} {self.counted}"
            f" since {_when(self.since)} until {until}"
        )


def lockouts() -> list[Lockout]:
    """Every counter in Redis at or over its limit, the soonest to end first: those
    the index of each minute noted, as far back as a lockout can last."""
    minute = now_ms() // 60_000
    minutes = range(minute - listed_for_ms() // 60_000, minute + 1)
    keys = counters.events_indexed([login_lockouts_key(m) for m in minutes])
    found = []
    for key, record in zip(keys, counters.event_records(keys), strict=True):
        parts = login_key_parts(key)
        if record is not None and parts is not None and record.count >= limit_of(parts[0]):
            found.append(_lockout(parts, record))
    return sorted(found, key=lambda found: (found.until is None, found.until or found.since))


def unlock(*, kind: str, subject: str) -> list[Lockout]:
    """Removes the counters of an account (by its digest) or an address group, in
    Redis and in this process; returns what Redis held."""
    keys = [counter_key(kind, counted, subject) for counted in ("failures", "attempts")]
    for key in keys:
        memory.process_counters.take(key)
    removed = counters.event_records(keys, take=True)
    return [
        _lockout(login_key_parts(key), record)
        for key, record in zip(keys, removed, strict=True)
        if record is not None
    ]


def unlock_account(name: str) -> tuple[str, list[Lockout]]:
    """Unlocks the account ``name`` spells, any way the login form takes it; returns
    the name as shown and what was removed."""
    name = identity.normalize_username(name.strip())
    return _escaped(name), unlock(kind=ACCOUNT, subject=account_key(name))


def unlock_address(text: str) -> tuple[str, list[Lockout]]:
    """Unlocks the group of the address ``text`` names (``addresses.named_group``)."""
    group = addresses.named_group(text)
    return group, unlock(kind=ADDRESS, subject=group)


def _lockout(parts: tuple[LoginCounter, str], record: EventRecord) -> Lockout:
    kind, counted = COUNTER_KINDS[parts[0]]
    since_ms = record.over_ms if record.over_ms is not None else record.since_ms
    return Lockout(
        kind=kind,
        subject=parts[1],
        shown=_escaped(record.subject) if kind == ACCOUNT else parts[1],
        counted=counted,
        count=record.count,
        since=_datetime(since_ms),
        until=None if record.ms_left < 0 else _datetime(now_ms() + record.ms_left),
    )


def _escaped(name: str) -> str:
    """A name as typed, quoted, with every character that does not print (zero width
    spaces, soft hyphens, controls) spelt out, so look-alikes look different."""
    spelt = "".join(
        char if char.isprintable() else f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF
        else f"\\U{ord(char):08x}"
        for char in name
    )  # fmt: skip
    return f"'{spelt}'"


def _datetime(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
