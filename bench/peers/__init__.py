"""The peers: what a developer would write instead of this service, measured beside it.

Each is a small Django project sharing the bench's MySQL dataset and Redis, served
by gunicorn with the service's own ``gunicorn.conf.py`` (gthread, the same workers
and threads), on a port of its own:

* ``constant``: a plain DRF ``APIView`` returning a constant dict, Django's default
  middleware, no authentication, no I/O (``settings``);
* ``hgetall``: a hand-written DRF view doing one ``HGETALL`` of the user's hash as
  the service cached it, no authentication (``settings``);
* ``django_cache``: Django's cache API (django-redis, a pickled dict) cache-aside
  on the user row, no authentication (``settings``);
* ``cacheops``: django-cacheops ``.cache().get()`` and a ``ModelSerializer``
  (``settings_cacheops``);
* ``cachalot``: django-cachalot's cached ``.get()`` and a ``ModelSerializer``
  (``settings_cachalot``).

cacheops and cachalot patch the ORM of the process they are installed in, hence a
settings module each. None of this touches the service's code: the user row is
read through an unmanaged model of its table (``models.PeerUser``).
"""
