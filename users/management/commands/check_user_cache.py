import functools
import sys

from users.cache import kinds
from users.maintenance.check import CheckReport, Problem, cache_check, estimate_entries
from users.management.base import CacheCommand, Progress, positive_int

# Problems listed at verbosity 1; -v 2 lists every one.
_LISTED = 20


class Command(CacheCommand):
    help = (
        "Audits cached entries of every kind: user entries against MySQL (stale, "
        "orphaned: deleted in MySQL), every kind's against the form the service writes "
        "(malformed); --fix repairs them. Exits with 1 when it found problems and did "
        "not fix them."
    )

    def add_arguments(self, parser):
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument(
            "--sample",
            type=positive_int,
            default=1000,
            metavar="N",
            help="Check the first N entries Redis's SCAN returns (default 1000).",
        )
        scope.add_argument("--all", action="store_true", help="Check every cached entry.")
        parser.add_argument(
            "--fix",
            action="store_true",
            help="Rewrite each problem user entry from MySQL (or as absent), under a "
            "lease; delete any other problem entry.",
        )

    def handle(self, *args, **options):
        verbosity = options["verbosity"]
        sample = None if options["all"] else options["sample"]

        @functools.cache
        def in_all() -> tuple[int, bool]:
            """How many entries there are (an estimate unless exact), counted once:
            for the bar's end and the summary's "of about M"."""
            estimate = estimate_entries()
            return estimate.total(kind.name for kind in kinds.registered()), estimate.exact

        listed = 0

        def on_problem(problem: Problem) -> None:
            nonlocal listed
            listed += 1
            if verbosity >= 2 or (verbosity == 1 and listed <= _LISTED):
                progress.write(f"{problem.kind:<9} {problem.key}: {problem.detail}")

        progress = Progress(
            self.stdout,
            verbosity=verbosity,
            unit="entries",
            total=lambda: in_all()[0] if sample is None else min(sample, in_all()[0]),
        )
        with progress:
            report = cache_check(
                sample=sample, fix=options["fix"], on_problem=on_problem, on_batch=progress.advance
            )
        if verbosity == 1 and listed > _LISTED:
            self.stdout.write(f"... and {listed - _LISTED} more (-v 2 lists them all)")
        if report.complete:
            scope = f"{report.examined} cached entries"
        else:
            total, exact = in_all()
            scope = (
                f"a sample of {report.examined} of {'' if exact else 'about '}"
                f"{max(total, report.examined)} cached entries"
            )
        summary = f"Checked {scope} ({self._by_kind(report)}): " + ", ".join(
            f"{count} {problem}" for problem, count in report.found.items()
        )
        if not report.problems:
            if verbosity >= 1:
                self.stdout.write(self.style.SUCCESS(f"{summary}. No problems."))
            return
        if options["fix"]:
            if verbosity >= 1:
                self.stdout.write(self.style.SUCCESS(f"{summary}; fixed {report.fixed}."))
            return
        if verbosity >= 1:
            self.stdout.write(self.style.WARNING(f"{summary}. Run with --fix to repair them."))
        sys.exit(1)

    @staticmethod
    def _by_kind(report: CheckReport) -> str:
        return ", ".join(f"{count} {kind}" for kind, count in report.examined_by_kind.items())
