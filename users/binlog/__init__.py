"""The binary log follower: every committed change to the user and token tables,
whoever made it, reaches the cache (``python manage.py follow_binlog``).

The services invalidate their own writes after the commit; a raw
``QuerySet.update()``, a data migration, a DBA's ``UPDATE`` or another application
writing the same tables do not. MySQL's row-based binary log lists every committed
row change, whoever made it, so a process that reads it as a replica does and
turns each change into the deletion the services apply ("Scaling Memcache at
Facebook", NSDI 2013, section 4.1: mcsqueal).

``server`` says what the follower needs of the server, ``follower`` reads and
applies, ``metrics`` is what it reports. docs/binlog-follower.md has the rest.
"""
