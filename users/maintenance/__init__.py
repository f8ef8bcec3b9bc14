"""Operator work on the user cache, in bulk: warm it (``warm``), audit and repair it
(``check``), and what the admin shows of it (``user_state`` for one user,
``overview`` for the whole cache); the flush is the
cache's own (``users.cache.flush``), since the binary log follower needs it too.
The management commands and the admin's actions are thin wrappers around these.

Filling goes through the cache's read-through (``users.cache.readthrough``), so a
bulk run follows the read path's rules: an entry is filled only while its filler
holds the entry's lease, taken before the MySQL load, and every write deletes or
takes the lease; a bulk fill beside live traffic can never store a state older
than a concurrent write.
"""
