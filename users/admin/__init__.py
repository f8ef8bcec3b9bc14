"""The Django admin for users and their API tokens: ``users`` (the user admin and
its forms), ``cache`` (what the user admin shows and does of the cache) and
``tokens`` (DRF's token admin, limited). Django's autodiscovery imports this
package; the two registrations are in its modules.

Every save and delete goes through ``users.services``, and the cache follows
every change of a user or a token whatever path makes it (``users.invalidation``).
Who may change whom follows ``users.permissions`` here as in the API: a staff
account with ``change_user`` cannot edit, set the password of or delete a
superuser or another staff account, and only a superuser grants privileges
(staff status, superuser status, groups, permissions). An API token is its
user's identity, so tokens follow the same rule, and their keys are shown only
for the users the viewer may manage.
"""

from . import tokens, users

__all__ = ["tokens", "users"]
