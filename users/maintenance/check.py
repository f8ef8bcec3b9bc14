"""Check: cached users audited against MySQL, and repaired on request."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable

from .. import entries
from ..cache import cluster, inspection
from ..cache.keys import entry_tag, family_pattern
from ..cache.kinds import ABSENT, EXPIRES, is_absent
from ..cache.transport import retrying
from ..models import User
from ..reads import USERS
from .warm import DEFAULT_BATCH_SIZE, warm_ids


class ProblemKind(enum.StrEnum):
    STALE = "stale"
    ORPHANED = "orphaned"
    MALFORMED = "malformed"


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    key: str
    kind: ProblemKind
    detail: str


@dataclasses.dataclass(slots=True)
class CheckReport:
    examined: int = 0
    found: dict[ProblemKind, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(ProblemKind, 0)
    )
    fixed: int = 0

    @property
    def problems(self) -> int:
        return sum(self.found.values())


_ENTRY_NAMES = frozenset(entries.ENTRY_NAMES)
# A write's cache change lands just after its commit; an entry read just before
# the commit and a row read just after look stale for that moment. Suspects are
# looked at again this much later, and only those still wrong are reported.
_RECHECK_AFTER_SECONDS = 0.25


def cache_check(
    *,
    sample: int | None = None,
    fix: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_problem: Callable[[Problem], None] | None = None,
) -> CheckReport:
    """Audits cached users against MySQL: the first ``sample`` entries SCAN finds, or
    every entry when ``sample`` is None.

    Reports stale entries (differ from the row, or cache a user as absent who
    exists), orphaned ones (the user was deleted) and malformed ones (not a hash,
    no TTL, wrong fields, a key that names no id). ``fix`` rewrites each problem
    entry as a warm of its id would (the row, or the absent marker), under a
    lease, and deletes keys that name no id.
    """
    report = CheckReport()
    for keys in cluster.scan_project_keys(family_pattern(USERS.name), count=batch_size):
        if sample is not None:
            keys = keys[: sample - report.examined]
        if not keys:
            continue
        report.examined += len(keys)
        problems = retrying(lambda keys=keys: _problems(keys))
        if problems:
            time.sleep(_RECHECK_AFTER_SECONDS)
            suspects = [problem.key for problem in problems]
            problems = retrying(lambda suspects=suspects: _problems(suspects))
        for problem in problems:
            report.found[problem.kind] += 1
            if on_problem is not None:
                on_problem(problem)
        if fix and problems:
            report.fixed += _repair(problems)
        if sample is not None and report.examined >= sample:
            break
    return report


def _problems(keys: list[str]) -> list[Problem]:
    infos = inspection.inspect_many(keys)
    user_ids = [_user_id(key) for key in keys]
    expected = entries.load(User.objects.filter(id__in=[i for i in user_ids if i is not None]))
    problems = []
    for info, user_id in zip(infos, user_ids, strict=True):
        detail = _problem(info, user_id, expected.get(user_id) if user_id is not None else None)
        if detail is not None:
            problems.append(Problem(key=info.key, kind=detail[0], detail=detail[1]))
    return problems


def _user_id(key: str) -> int | None:
    tag = entry_tag(key)
    digits = tag is not None and tag.isascii() and tag.isdigit() and len(tag) <= 19
    return int(tag) if digits else None


def _problem(
    info: inspection.EntryInfo, user_id: int | None, expected: dict[str, str] | None
) -> tuple[ProblemKind, str] | None:
    if not info.exists:
        return None  # expired or removed since SCAN saw it
    if user_id is None:
        return ProblemKind.MALFORMED, "the key names no user id"
    if info.fields is None:
        return ProblemKind.MALFORMED, f"a {info.type}, not a hash"
    if info.ttl_ms == -1:
        return ProblemKind.MALFORMED, "no expiry"
    names = set(info.fields) - {EXPIRES}
    if USERS.open(user_id, info.fields, time.time()) is None:
        if EXPIRES not in info.fields:
            return ProblemKind.MALFORMED, "no expiry field"
        if ABSENT not in names and names != _ENTRY_NAMES:
            missing, extra = sorted(_ENTRY_NAMES - names), sorted(names - _ENTRY_NAMES)
            return ProblemKind.MALFORMED, f"fields missing {missing}, unexpected {extra}"
        return ProblemKind.MALFORMED, "a value or the expiry is not one this service writes"
    if is_absent(info.fields):
        if expected is not None:
            return ProblemKind.STALE, "cached as absent, but the user exists"
        return None
    if expected is None:
        return ProblemKind.ORPHANED, "the user no longer exists"
    differing = sorted(
        entries.COLUMN_OF[name] for name in expected if info.fields[name] != expected[name]
    )
    if differing:
        return ProblemKind.STALE, f"differs from MySQL in {', '.join(differing)}"
    return None


def _repair(problems: list[Problem]) -> int:
    user_ids = [_user_id(problem.key) for problem in problems]
    nameless = [p.key for p, user_id in zip(problems, user_ids, strict=True) if user_id is None]
    retrying(lambda: cluster.unlink_many(nameless))
    named = [user_id for user_id in user_ids if user_id is not None]
    if named:
        warm_ids(named)
    return len(problems)
