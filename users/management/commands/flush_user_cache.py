import sys

from django.core.management.base import CommandError

from users.cache import kinds
from users.cache.flush import cache_flush, estimate_keys
from users.conf import user_cache_settings
from users.management.base import CacheCommand, redis_location, user_id
from users.models import User


class Command(CacheCommand):
    help = (
        "Removes cached entries of every kind and their leases from Redis: SCAN over this "
        "project's key prefix and UNLINK a page at a time, never FLUSHDB or FLUSHALL. "
        "Other applications' keys, and this project's rate-limit counters, stay. --all "
        "asks for confirmation first, as Django's flush does."
    )

    def add_arguments(self, parser):
        selection = parser.add_mutually_exclusive_group(required=True)
        selection.add_argument(
            "--all",
            action="store_true",
            help="Every cached entry of this project, of any schema version.",
        )
        selection.add_argument(
            "--ids",
            nargs="+",
            type=user_id,
            metavar="ID",
            help="These users' entries, leases and token lookups.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count what would be removed, and remove nothing.",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Remove everything (--all) without asking: for scripts and jobs, where "
            "there is no terminal to ask on.",
        )

    def handle(self, *args, **options):
        dry_run = options["dry_run"]
        if options["all"] and not dry_run and options["interactive"] and not self._confirmed():
            self.stdout.write("Flush cancelled.")
            return
        report = cache_flush(model=User, pks=options["ids"], dry_run=dry_run)
        if options["verbosity"] < 1:
            return
        if dry_run:
            summary = f"Would remove {report.total} keys ({self._by_label(report.matched)})."
        else:
            summary = f"Removed {report.removed} keys ({self._by_label(report.matched)})."
        kept = report.matched[kinds.OTHER]
        if kept:
            summary += f" Kept {kept} other keys under {user_cache_settings.KEY_PREFIX}:."
        self.stdout.write(self.style.SUCCESS(summary))

    def _confirmed(self) -> bool:
        """Asks on the terminal, as Django's flush does; refuses without one."""
        if sys.stdin is None or not sys.stdin.isatty():
            raise CommandError(
                "flush_user_cache --all asks for confirmation and there is no terminal to "
                "ask on: add --no-input to flush without asking."
            )
        estimate = estimate_keys()
        removed = {label: count for label, count in estimate.counts.items() if label != kinds.OTHER}
        self.stdout.write(
            f"This will remove {'' if estimate.exact else 'about '}{sum(removed.values())} keys "
            f"({self._by_label(removed)}) under {user_cache_settings.KEY_PREFIX}: from Redis "
            f"at {redis_location()}. Other keys stay; reads fill the entries again from MySQL."
        )
        try:
            answer = input("Type 'yes' to continue, or 'no' to cancel: ")
        except (EOFError, KeyboardInterrupt):
            self.stdout.write("")
            return False
        return answer.strip() == "yes"

    @staticmethod
    def _by_label(counts: dict[str, int]) -> str:
        return ", ".join(
            f"{counts.get(label, 0)} {kinds.describe(label)}"
            for label in kinds.key_labels()
            if label != kinds.OTHER
        )
