from users.cache import kinds
from users.cache.flush import cache_flush
from users.conf import user_cache_settings
from users.management.base import CacheCommand, positive_int
from users.models import User


class Command(CacheCommand):
    help = (
        "Removes cached users, their leases and token lookups from Redis: SCAN over this "
        "project's key prefix and UNLINK a page at a time, never FLUSHDB or FLUSHALL. "
        "Other applications' keys, and this project's rate-limit counters, stay."
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
            type=positive_int,
            metavar="ID",
            help="These users' entries, leases and token lookups.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count what would be removed, and remove nothing.",
        )

    def handle(self, *args, **options):
        dry_run = options["dry_run"]
        report = cache_flush(model=User, pks=options["ids"], dry_run=dry_run)
        if options["verbosity"] < 1:
            return
        matched = ", ".join(
            f"{count} {kinds.describe(label)}"
            for label, count in report.matched.items()
            if label != kinds.OTHER
        )
        if dry_run:
            summary = f"Would remove {report.total} keys ({matched})."
        else:
            summary = f"Removed {report.removed} keys ({matched})."
        kept = report.matched[kinds.OTHER]
        if kept:
            summary += f" Kept {kept} other keys under {user_cache_settings.KEY_PREFIX}:."
        self.stdout.write(self.style.SUCCESS(summary))
