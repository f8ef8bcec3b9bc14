"""The Redis store of the user cache, a module per concern:

* ``keys``: every key shape, and what a key under the project's prefix holds;
* ``scripts``: the Lua scripts, each atomic in Redis, and what each guarantees;
* ``transport``: the client, the circuit breaker's gate, and the only code that
  knows redis-py's internals (the hot path sends commands past its per-call
  machinery);
* ``store``: operations on entries, one or a batch at a time;
* ``counters``: rate-limit windows, and the token lookup that counts its request;
* ``cluster``: what spans every node (a batch's scripts per hash slot, SCAN,
  UNLINK, INFO).

This package knows how entries lie in Redis and nothing about when to read or
write them: that is ``users.reads`` (the read-through) and ``users.invalidation``
(what a write does), and the entry's format is ``users.entries``'.
"""
