"""The Lua scripts. Each runs atomically in Redis, so a hash, its fields and its TTL
always land together and a check-then-write cannot be interleaved. Every script
that names an entry names its lease too: both share the entry's hash tag.

Whatever another writer of Redis left under a key (another type, a value of
another form, a lease without an expiry), a script neither fails nor waits on
it: a key of the wrong type is no entry, lease or counter this service wrote,
and is deleted (``HASH_OF``, ``LEASE_HELD_BY``, ``COUNTED``). A script that
raised would count as Redis failing, and open the circuit breaker for everyone.

The lease is what keeps the cache from going stale. A reader that misses takes
the entry's lease before it loads the row and stores its load only while it
still holds the lease; every write deletes or replaces the lease, so a load made
before a write is refused ("Scaling Memcache at Facebook", NSDI 2013, 3.2.1).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from redis.commands.core import Script

# Script sources by SHA, for the servers that answer NOSCRIPT.
_SOURCES: dict[str, bytes] = {}


@functools.cache
def script(source: str) -> Script:
    """The script object (its SHA); each call names its client, and a server that does
    not know the script yet is sent it (``execute_many``, ``cluster.eval_many``)."""
    loaded = Script(None, source.encode())
    _SOURCES[loaded.sha] = loaded.script
    return loaded


def script_source(sha: str | bytes) -> bytes:
    """The source of a script of ``script()``, by its SHA."""
    return _SOURCES[sha.decode() if isinstance(sha, bytes) else sha]


def evalsha(source: str, keys: Sequence[str], args: Sequence) -> tuple:
    """The command that runs ``source`` (see ``script``) on ``keys`` with ``args``."""
    return ("EVALSHA", script(source).sha, len(keys), *keys, *args)


# Lua shared by the scripts below (prepended to each).
# HASH_OF(key): the hash at key, {} when none; a key of another type is deleted.
# LEASE_HELD_BY(lease): who holds the lease, false when nobody does; a lease of
#   another type is deleted.
# TAKE(lease, token, ttl): takes the lease when nobody holds it, or when what holds
#   it is no lease this service took (without an expiry, or longer than a lease
#   lives); true when taken.
# COUNTED(key, n): INCRBY n, starting again from nothing at a value that is no count.
# STORE(key, hash, ttl): the key becomes exactly ``hash`` (a flat field, value list),
#   expiring in ttl ms. A fresh key costs HSET and PEXPIRE; one that held anything
#   (another entry's fields, another type) is deleted first.
_HELPERS = """
local function HASH_OF(key)
  local ok, hash = pcall(redis.call, 'HGETALL', key)
  if ok then return hash end
  redis.call('DEL', key)
  return {}
end
local function LEASE_HELD_BY(lease)
  local ok, holder = pcall(redis.call, 'GET', lease)
  if ok then return holder end
  redis.call('DEL', lease)
  return false
end
local function TAKE(lease, token, ttl)
  if redis.call('SET', lease, token, 'NX', 'PX', ttl) then return true end
  local left = redis.call('PTTL', lease)
  if left < 0 or left > tonumber(ttl) or not LEASE_HELD_BY(lease) then
    redis.call('SET', lease, token, 'PX', ttl)
    return true
  end
  return false
end
local function STORE(key, hash, ttl)
  local ok, added = pcall(redis.call, 'HSET', key, unpack(hash))
  if not ok or added * 2 < #hash then
    redis.call('DEL', key)
    redis.call('HSET', key, unpack(hash))
  end
  redis.call('PEXPIRE', key, ttl)
end
local function COUNTED(key, n)
  local ok, count = pcall(redis.call, 'INCRBY', key, n)
  if ok then return count end
  redis.call('DEL', key)
  return redis.call('INCRBY', key, n)
end
"""

# Entry states in LEASE's replies.
PRESENT, LEASED, NOT_LEASED = 1, 2, 0

# KEYS: entry, lease, entry, lease, ... ARGV: lease token, lease ttl (ms), mode.
# For each entry, by mode:
#   read     the entry's hash if it exists ({1, hash}); else the lease if nobody
#            holds it ({2}); else {0}: another reader is filling it;
#   missing  the lease where the entry is missing and nobody holds its lease
#            ({2}), else {0}: a warm that leaves present entries alone;
#   refresh  the lease whoever holds it ({2}): a warm that replaces present
#            entries (a reader whose lease this replaces merely fails to store).
LEASE = _HELPERS + """
local token, ttl, mode = ARGV[1], ARGV[2], ARGV[3]
local replies = {}
for i = 1, #KEYS, 2 do
  local entry, lease = KEYS[i], KEYS[i + 1]
  local reply = {0}
  if mode == 'refresh' then
    redis.call('SET', lease, token, 'PX', ttl)
    reply = {2}
  else
    local hash = mode == 'read' and HASH_OF(entry) or {}
    if #hash > 0 then
      reply = {1, hash}
    elseif (mode == 'read' or redis.call('EXISTS', entry) == 0) and TAKE(lease, token, ttl) then
      reply = {2}
    end
  end
  replies[#replies + 1] = reply
end
return replies
"""

# KEYS: entry, lease, entry, lease, ... ARGV: lease token, a JSON document
# [shapes, entries], and whether to give the leases back ('1') or keep them
# ('0'). shapes is a list of field-name lists, and each entry is [shape (its
# index in shapes, from 1), ttl (ms), value, ...], all values strings.
# Stores each entry only while its filler still holds the entry's lease.
# Returns 1 (stored) or 0 (refused: a write took the lease meanwhile) per entry.
# A reader's fill keeps its leases until they expire: a reader that missed just
# before the fill then finds the lease held and waits for the entry, rather
# than taking a new lease and loading the row again; any write still replaces
# or deletes them. The entries travel as one JSON argument: the client packs
# one string instead of ten arguments per entry, at about the same cost to the
# script, and the field names travel once per shape.
FILL = _HELPERS + """
local token, release = ARGV[1], ARGV[3] == '1'
local batch = cjson.decode(ARGV[2])
local shapes, entries = batch[1], batch[2]
local stored = {}
for e = 1, #entries do
  local entry, key, lease = entries[e], KEYS[2 * e - 1], KEYS[2 * e]
  stored[e] = 0
  if LEASE_HELD_BY(lease) == token then
    local names = shapes[entry[1]]
    local hash = {}
    for f = 1, #names do
      hash[2 * f - 1], hash[2 * f] = names[f], entry[f + 2]
    end
    STORE(key, hash, entry[2])
    if release then redis.call('DEL', lease) end
    stored[e] = 1
  end
end
return stored
"""

# KEYS: entry, lease, entry, lease, ... ARGV: lease token. Gives back the leases
# this token still holds: after a failed load, or a load that found no row of a
# kind whose absence is not cached (tokens). Returns 1 (given back) or 0 per entry.
RELEASE = _HELPERS + """
local released = {}
for i = 1, #KEYS, 2 do
  released[#released + 1] = 0
  if LEASE_HELD_BY(KEYS[i + 1]) == ARGV[1] then
    redis.call('DEL', KEYS[i + 1])
    released[#released] = 1
  end
end
return released
"""

# KEYS: entry, lease. ARGV: lease token, ttl (ms), field, value, ...
# A write's after-commit step: stores the committed state while the write's own
# lease (taken inside its transaction, under the row lock) still stands, and
# otherwise deletes the entry and whatever lease stands: a later write's (which
# then deletes rather than stores) or a reader's taken after the write's own ran
# out, with a row read before this commit, whose fill must fail. A later write
# replaces the lease, so a step that arrives late can never leave an older state
# behind: at worst it drops a newer one, which the next read loads again. The
# lease is kept until it expires, as a reader's fill keeps its own. Returns 1
# (stored) or 0 (deleted).
FILL_OR_DELETE = _HELPERS + """
if LEASE_HELD_BY(KEYS[2]) == ARGV[1] then
  STORE(KEYS[1], {unpack(ARGV, 3)}, ARGV[2])
  return 1
end
redis.call('DEL', KEYS[1], KEYS[2])
return 0
"""

# KEYS: counter. ARGV: requests, window (ms). Adds requests a process counted on
# its own (``counters.LocalWindows``) to a window as COUNT_IN_WINDOW counts them;
# returns the count and the window's time left.
ADD_TO_WINDOW = _HELPERS + """
local count = COUNTED(KEYS[1], ARGV[1])
if count == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {count, redis.call('PTTL', KEYS[1])}
"""

# KEYS: counter[, entry]. ARGV: window (ms), cost. Counts a request of ``cost``
# units in a fixed window that starts with its first request; returns the count
# and the window's time left. When an entry is named too (in the counter's hash
# slot), returns its HGETALL as well, and counts only if the entry exists: a
# token lookup counts its request in the same round trip, and a guessed token
# creates no counter. A request not counted here (the reply's count is 0) is
# counted by the throttle once authentication succeeds.
COUNT_IN_WINDOW = _HELPERS + """
local entry
if KEYS[2] then
  entry = HASH_OF(KEYS[2])
  if #entry == 0 then return {0, 0, entry} end
end
local count = COUNTED(KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1]), entry}
"""

# KEYS: an event counter (the login limits', ``counters.events_counted``), a hash:
# count, since (ms since the epoch: the window's first event), over (when the
# count reached the limit), subject (what it counts, readable). ARGV: mode, then
#   count  now (ms), window (ms), sliding ('1': each event restarts the window),
#          limit, subject: counts one event; returns {count, ms left, 1}, or, where
#          Redis refuses to write (full, under noeviction), the count without it
#          and 0;
#   peek   returns {count, ms left};
#   read   returns {ms left, the hash}; take, the same and deletes the counter.
# A counter found without an expiry (written by hand) gets one at its next event.
EVENT_WINDOW = _HELPERS + """
local key, mode = KEYS[1], ARGV[1]
-- A counter is a hash whose count is a number; anything else starts again.
if #HASH_OF(key) > 0 and not tonumber(redis.call('HGET', key, 'count')) then
  redis.call('DEL', key)
end
if mode == 'peek' then
  return {tonumber(redis.call('HGET', key, 'count') or 0), redis.call('PTTL', key)}
end
if mode == 'count' then
  local now, window, limit = ARGV[2], ARGV[3], tonumber(ARGV[5])
  local count = tonumber(redis.call('HGET', key, 'count') or 0) + 1
  local written = redis.pcall('HSET', key, 'count', count)
  if type(written) == 'table' and written.err then
    return {count - 1, redis.call('PTTL', key), 0}
  end
  if count == 1 then redis.call('HSET', key, 'since', now, 'subject', ARGV[6]) end
  if count == 1 or ARGV[4] == '1' or redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, window)
  end
  if count == limit then redis.call('HSET', key, 'over', now) end
  return {count, redis.call('PTTL', key), 1}
end
local reply = {redis.call('PTTL', key), redis.call('HGETALL', key)}
if mode == 'take' then redis.call('DEL', key) end
return reply
"""
