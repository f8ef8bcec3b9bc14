"""The service with its cache off, for the database-only baselines: reads and writes
through the same views, validation and token authentication, with no Redis work.

The bench serves this WSGI application with ``REDIS_URL`` at a closed loopback
port, so every read takes the service's own BYPASS path (the circuit breaker
opens and the token and the user are each one query), and with the write's
cache steps unplugged from outside: ``users.invalidation``'s receivers are
disconnected here, after Django has set up, so a create or a PATCH records no
outbox row and sends nothing to Redis. Nothing in the service knows about it.
"""

from django.db.models.signals import post_delete, post_save

from config.wsgi import application
from users.models import User

__all__ = ["application"]

# The uids users.invalidation.connect gives its receivers.
assert post_save.disconnect(sender=User, dispatch_uid="users.cache.users.user.saved")
assert post_delete.disconnect(sender=User, dispatch_uid="users.cache.users.user.deleted")
