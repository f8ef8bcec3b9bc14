"""The bulk measures, on a database and a key prefix of their own: ``warm_user_cache
--all`` and ``flush_user_cache --all`` timed from call to return on ``--bulk-users``
users (1,000,000 by default, as the targets state them), and Redis memory per
cached user.

A process of its own, ``python -m bench.bulk load N | warm | flush``, started by the
suite with ``DATABASE_URL`` and ``CACHE_KEY_PREFIX`` pointing at the bulk data:
its Django reads that database, while the driver's reads the HTTP scenarios'.
Each command prints one line of JSON. The timings start after Django is set up,
as a scheduled job's would be measured.
"""

from __future__ import annotations

import json
import sys

import django


def main(argv: list[str]) -> None:
    django.setup()
    from users.models import User

    from . import cache_commands, dataset, keys, micro

    command = argv[0]
    if command == "load":
        dataset.recreate_database()
        dataset.load_users(1, int(argv[1]))
        result = {"users": User.objects.count()}
    elif command == "warm":
        users = User.objects.count()
        seconds = cache_commands.run_timed(cache_commands.WARM_COMMAND)
        cached = keys.count_keys(keys.user_entries_pattern())
        if cached != users:
            raise RuntimeError(f"{cache_commands.WARM_COMMAND} cached {cached} of {users}")
        result = {
            "users": users,
            "seconds": seconds,
            "memory_usage_bytes": micro.memory_usage_per_user(
                user_count=users, samples=200, seed=int(argv[1])
            ),
        }
    elif command == "flush":
        before = keys.count_keys(keys.all_keys_pattern())
        seconds = cache_commands.run_timed(cache_commands.FLUSH_COMMAND)
        left = keys.count_keys(keys.all_keys_pattern())
        if left:
            raise RuntimeError(f"{cache_commands.FLUSH_COMMAND} left {left} keys")
        result = {"keys": before, "seconds": seconds}
    else:
        raise SystemExit(f"unknown command: {command}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
