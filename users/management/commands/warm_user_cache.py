import time

from users.maintenance import warm
from users.management.base import (
    CacheCommand,
    Progress,
    user_id,
    utc_date_or_datetime,
    whole_number,
)


class Command(CacheCommand):
    help = (
        "Loads users from MySQL into the Redis cache in batches, under the same lease "
        "rules as the API's reads: safe while the API serves traffic, and idempotent."
    )

    def add_arguments(self, parser):
        selection = parser.add_mutually_exclusive_group(required=True)
        selection.add_argument("--all", action="store_true", help="Every user.")
        selection.add_argument(
            "--ids",
            nargs="+",
            type=user_id,
            metavar="ID",
            help="These users; an id with no user is cached as absent, as a read would.",
        )
        selection.add_argument(
            "--since",
            type=utc_date_or_datetime,
            metavar="DATE",
            help="Users created or changed at or after DATE (2024-05-31 or "
            "2024-05-31T12:00, UTC unless an offset is given).",
        )
        parser.add_argument(
            "--batch-size",
            type=whole_number(most=warm.MAX_BATCH_SIZE),
            default=warm.DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"Users per MySQL query and Redis round trip (default "
            f"{warm.DEFAULT_BATCH_SIZE}, at most {warm.MAX_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--missing-only",
            action="store_true",
            help="Leave users that are cached already alone instead of refreshing them.",
        )

    def handle(self, *args, **options):
        verbosity = options["verbosity"]
        selection = {"user_ids": options["ids"], "since": options["since"]}
        progress = Progress(
            self.stdout,
            verbosity=verbosity,
            unit="users",
            total=lambda: warm.cache_warm_count(**selection),
        )
        with progress:
            report = warm.cache_warm(
                **selection,
                batch_size=options["batch_size"],
                missing_only=options["missing_only"],
                on_batch=lambda batch: progress.advance(batch.examined),
            )

        if verbosity >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Warmed {report.examined} users in {time.monotonic() - progress.started:.2f}"
                    f" s ({progress.rate(report.examined)}): {report.filled} cached, "
                    f"{report.absent} cached as absent, {report.skipped} already cached, "
                    f"{report.refused} changed meanwhile (left to the write)."
                )
            )
