import sys
import time

from django.core.management.base import CommandError
from tqdm import tqdm

from users.maintenance import warm
from users.management.base import CacheCommand, positive_int, utc_date_or_datetime


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
            type=positive_int,
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
            type=positive_int,
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
        if options["batch_size"] > warm.MAX_BATCH_SIZE:
            raise CommandError(f"--batch-size is at most {warm.MAX_BATCH_SIZE}.")
        verbosity = options["verbosity"]
        selection = {"user_ids": options["ids"], "since": options["since"]}
        show_bar = verbosity >= 1 and sys.stderr.isatty()
        total = warm.cache_warm_count(**selection) if show_bar else None
        started = time.monotonic()
        done = 0

        with tqdm(total=total, disable=not show_bar, unit=" users", dynamic_ncols=True) as bar:

            def on_batch(batch: warm.WarmReport) -> None:
                nonlocal done
                done += batch.examined
                bar.update(batch.examined)
                if verbosity >= 2 and not show_bar:
                    self.stdout.write(f"{done} users so far, {self._rate(done, started)}")

            report = warm.cache_warm(
                **selection,
                batch_size=options["batch_size"],
                missing_only=options["missing_only"],
                on_batch=on_batch,
            )

        if verbosity >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Warmed {report.examined} users in {time.monotonic() - started:.2f} s "
                    f"({self._rate(report.examined, started)}): {report.filled} cached, "
                    f"{report.absent} cached as absent, {report.skipped} already cached, "
                    f"{report.refused} changed meanwhile (left to the write)."
                )
            )

    @staticmethod
    def _rate(count: int, started: float) -> str:
        return f"{count / max(time.monotonic() - started, 1e-6):.0f} users/s"
