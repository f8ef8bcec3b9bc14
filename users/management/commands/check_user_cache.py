import sys

from users.maintenance.check import Problem, cache_check
from users.management.base import CacheCommand, positive_int

# Problems listed at verbosity 1; -v 2 lists every one.
_LISTED = 20


class Command(CacheCommand):
    help = (
        "Audits cached users against MySQL and reports stale, orphaned (deleted in MySQL) "
        "and malformed entries; --fix repairs them. Exits with 1 when it found problems "
        "and did not fix them."
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
        scope.add_argument("--all", action="store_true", help="Check every cached user.")
        parser.add_argument(
            "--fix",
            action="store_true",
            help="Rewrite each problem entry from MySQL (or as absent), under a lease.",
        )

    def handle(self, *args, **options):
        verbosity = options["verbosity"]
        listed = 0

        def on_problem(problem: Problem) -> None:
            nonlocal listed
            listed += 1
            if verbosity >= 2 or (verbosity == 1 and listed <= _LISTED):
                self.stdout.write(f"{problem.kind:<9} {problem.key}: {problem.detail}")

        report = cache_check(
            sample=None if options["all"] else options["sample"],
            fix=options["fix"],
            on_problem=on_problem,
        )
        if verbosity == 1 and listed > _LISTED:
            self.stdout.write(f"... and {listed - _LISTED} more (-v 2 lists them all)")
        found = ", ".join(f"{count} {kind}" for kind, count in report.found.items())
        summary = f"Checked {report.examined} cached users: {found}"
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
