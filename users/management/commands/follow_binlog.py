import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import CommandError
from django.db import connection
from prometheus_client import start_http_server

from users.binlog import server
from users.binlog.follower import Follower
from users.management.base import CacheCommand

logger = logging.getLogger("users.binlog")


class Command(CacheCommand):
    help = (
        "Follows MySQL's binary log and deletes the cached entry of every user and token "
        "whose row a committed transaction changed, whoever wrote it (raw SQL, "
        "QuerySet.update(), another application). Runs until SIGTERM or SIGINT; its "
        "metrics are served on FOLLOWER_METRICS_BIND."
    )

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--check",
            action="store_true",
            help="Only check that the server can be followed (binary log, row format, "
            "privileges): exit 0 if so, else say what to change and exit 1.",
        )
        mode.add_argument(
            "--from-end",
            action="store_true",
            help="Forget the stored position and start at the end of the binary log: after "
            "the position was purged or the server replaced, once the cache has been "
            "flushed (flush_user_cache --all).",
        )

    def handle(self, *args, **options):
        try:
            if options["check"]:
                self._check(verbosity=options["verbosity"])
                return
            self._follow(from_end=options["from_end"])
        except server.Refused as exc:
            raise CommandError(f"cannot follow the binary log: {exc}") from None

    def _check(self, *, verbosity: int) -> None:
        with connection.cursor() as cursor:
            server.check(cursor)
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS("The binary log can be followed."))

    def _follow(self, *, from_end: bool) -> None:
        identity, position = server.start_position(from_end=from_end)
        host, _, port = settings.FOLLOWER_METRICS_BIND.rpartition(":")
        try:
            start_http_server(int(port), addr=host.strip("[]"))
        except (OSError, ValueError) as exc:
            raise CommandError(
                f"FOLLOWER_METRICS_BIND={settings.FOLLOWER_METRICS_BIND}: {exc}"
            ) from None
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        follower = Follower(server_identity=identity, position=position, stop=stop)
        follower.run()
        logger.info("stopped at %s", follower.position)
