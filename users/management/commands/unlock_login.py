from axes.handlers.proxy import AxesProxyHandler
from django.core.management.base import BaseCommand, CommandError

from users.logins import account_key


class Command(BaseCommand):
    help = (
        "Lifts a login lockout: the failures counted against an account (under any "
        "spelling of its name), a client address, or both."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--username", help="The account, spelt any way the login form takes.")
        parser.add_argument("--address", help="A client address, e.g. 203.0.113.7.")

    def handle(self, *args, **options):
        username, address = options["username"], options["address"]
        if not username and not address:
            raise CommandError("Name an account (--username), an address (--address), or both.")
        reset = 0
        if username:
            name = account_key(username)
            reset += AxesProxyHandler.reset_attempts(username=name)
            self.stdout.write(f"Account {name!r}: failures cleared.")
        if address:
            reset += AxesProxyHandler.reset_attempts(ip_address=address)
            self.stdout.write(f"Address {address}: failures cleared.")
        if options["verbosity"] >= 1:
            self.stdout.write(self.style.SUCCESS(f"Removed {reset} failure counters."))
