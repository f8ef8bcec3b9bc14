"""Limits on the login forms, ``/admin/login/`` and ``/api-auth/login/``.

Each attempt there costs a password hash, so attempts are both a way to guess
passwords and a way to tie up the server. Two limits, each kept per account and
per client address, in four separate key spaces (``users.cache.keys.LoginCounter``):

* failures: ``LOGIN_FAILURE_LIMIT`` of them, none more than
  ``LOGIN_LOCKOUT_MINUTES`` after the one before, lock the account or the
  address until ``LOGIN_LOCKOUT_MINUTES`` after the last. A success clears the
  account's own failures, never the address's;
* attempts, successful or not: ``LOGIN_RATE_ACCOUNT`` and ``LOGIN_RATE_ADDRESS``,
  counted in fixed windows, as the API's rate limits are.

A refused attempt hashes no password: ``guard.LoginLimitBackend`` comes first in
``AUTHENTICATION_BACKENDS`` and stops ``authenticate()`` before the model
backend runs, and ``users.middleware.LoginLimitMiddleware`` answers 429 with
Retry-After (``guard.refused``).

The modules: ``accounts`` (an account as the database tells accounts apart),
``addresses`` (the client address every per-address limit counts), ``limits``
(the counting, in Redis and, while Redis does not answer, in the process; the
operators' list and unlock), ``guard`` (the backend, the signals, the 429
page), ``pages`` (the admin's page of lockouts), ``password_change`` (the
admin's password change, whose check of the old password counts as an attempt).
"""


def connect() -> None:
    """Connects the signal receivers that count failures and successes, and reads
    the settings once, so that a bad one stops the start rather than a login."""
    from . import guard

    guard.connect()
