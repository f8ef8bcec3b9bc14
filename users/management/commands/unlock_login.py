import argparse

from users.logins import addresses, limits, lockouts
from users.management.base import CacheCommand


def group_named(raw: str) -> str:
    """An argparse type: an IP address, or an address group as --list shows it."""
    try:
        return addresses.named_group(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an IP address") from None


def account_named(raw: str) -> str:
    """An argparse type: a name the login form could have been given."""
    if not raw.strip():
        raise argparse.ArgumentTypeError(f"{raw!r} names no account")
    return raw


class Command(CacheCommand):
    help = (
        "Lists the login lockouts (--list), or lifts those of an account, under any "
        "spelling of its name, of a client address (with the IPv6 network it counts "
        "in), or both, and says exactly what it removed."
    )
    usage_error = "name an account (--username), an address (--address), or --list"

    def add_arguments(self, parser):
        parser.add_argument(
            "--list",
            action="store_true",
            help="Every account and address locked out or over its rate of attempts.",
        )
        parser.add_argument(
            "--username",
            type=account_named,
            help="An account, spelt any way the login form takes.",
        )
        parser.add_argument(
            "--address",
            type=group_named,
            help="A client address, e.g. 203.0.113.7 or 2001:db8::1 (its /64), or a "
            "network as --list shows it.",
        )

    def handle(self, *args, **options):
        username, address = options["username"], options["address"]
        if options["list"]:
            if username is not None or address is not None:
                self.parser.error("--list takes no --username or --address")
            self._list(options["verbosity"])
            return
        if username is None and address is None:
            self.parser.error(self.usage_error)
        removed = []
        if username is not None:
            removed += self._unlock(*lockouts.unlock_account(username), kind=limits.ACCOUNT)
        if address is not None:
            removed += self._unlock(*lockouts.unlock_address(address), kind=limits.ADDRESS)
        if options["verbosity"] >= 1 and removed:
            self.stdout.write(self.style.SUCCESS(f"Removed {len(removed)} counters."))

    def _unlock(self, shown: str, removed: list[lockouts.Lockout], *, kind: str) -> list:
        for lockout in removed:
            self.stdout.write(f"Removed {lockout.describe()}")
        if not removed:
            self.stdout.write(f"Nothing to remove for {kind} {shown}.")
        return removed

    def _list(self, verbosity: int) -> None:
        locked = lockouts.lockouts()
        for lockout in locked:
            self.stdout.write(lockout.describe())
        if verbosity >= 1:
            self.stdout.write(
                self.style.SUCCESS(f"{len(locked)} lockouts.") if locked else "No lockouts."
            )
