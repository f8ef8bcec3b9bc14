-- The wrk side of every HTTP scenario; bench/load.py runs it.
--
-- wrk -s bench/scenarios.lua URL -- SCENARIO TOKEN THREADS ARGUMENT PATH
--   fixed -                     GET PATH
--   get-random FIRST:LAST       GET PATH<id>, ids drawn uniformly from FIRST..LAST
--   get-sequential FIRST:LAST   GET PATH<id>, each id in FIRST..LAST once, then stop
--   get-burst FIRST:LAST:N      GET PATH?ids=<N ids>: every connection asks every id in
--                               FIRST..LAST, N consecutive ids a request, all the
--                               connections on the same ids at once, then stop
--   get-batch FIRST:LAST:N      GET PATH?ids=<N ids drawn uniformly from FIRST..LAST>
--   get-not-modified FIRST:LAST GET PATH<id> with If-None-Match: * (a 304 on a hit)
--   create RUN_ID               POST PATH, a new username on every request
--   patch FIRST:LAST            PATCH PATH<id>, a new first name, ids drawn uniformly
-- TOKEN is the API token, or - to send no Authorization header (the peers).
--
-- Each thread is its own Lua state: setup() numbers them so that they split the
-- ids (get-sequential) and never repeat a username (create) without talking.
-- wrk calls request() once on the first thread to check the script, and never
-- sends that request: with get-sequential, the first id of thread 0 is the one
-- never asked for; with get-burst, one of the copies of the first batch.
-- done() prints one line, BENCH-RESULT {json}, that bench/load.py parses.

local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

local scenario, path, first_id, last_id, thread_total, next_id, run_id, counter, batch_size
local copies, copies_left
local exhausted = false

local function parse_range(argument)
  local first, last, rest = string.match(argument, "^(%d+):(%d+):?(%d*)$")
  if not first then
    error("expected FIRST:LAST[:N], got " .. tostring(argument))
  end
  return tonumber(first), tonumber(last), tonumber(rest)
end

function init(args)
  scenario = args[1]
  if args[2] ~= "-" then
    wrk.headers["Authorization"] = "Token " .. args[2]
  end
  -- As the TLS-terminating proxy in front of production says: no redirect to https.
  wrk.headers["X-Forwarded-Proto"] = "https"
  thread_total = tonumber(args[3])
  local argument = args[4]
  path = args[5]
  math.randomseed(1 + thread_index)
  if scenario == "fixed" then
    return
  elseif scenario == "create" then
    run_id = argument
    counter = 0
    wrk.headers["Content-Type"] = "application/json"
    return
  end
  first_id, last_id, batch_size = parse_range(argument)
  if scenario == "get-sequential" then
    next_id = first_id + thread_index
  elseif scenario == "get-burst" then
    -- Every connection of every thread asks each batch: this thread's connections
    -- take it one after the other, as many copies as it has connections.
    next_id = first_id
    copies = tonumber(args[6])
    copies_left = copies
  elseif scenario == "get-not-modified" then
    wrk.headers["If-None-Match"] = "*"
  elseif scenario == "patch" then
    counter = 0
    wrk.headers["Content-Type"] = "application/json"
  elseif scenario ~= "get-random" and scenario ~= "get-batch" then
    error("unknown scenario: " .. tostring(scenario))
  end
end

local function stop_walk()
  -- This thread's ids are done: stop its loop and tell bench/load.py, which
  -- interrupts wrk once every thread has said so. The request returned here is
  -- never answered (the loop stops), so it only has to be harmless.
  if not exhausted then
    exhausted = true
    io.stdout:write("ids-exhausted\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
  return wrk.format("GET", path .. first_id)
end

local function next_sequential_request()
  if next_id > last_id then
    return stop_walk()
  end
  local user_id = next_id
  next_id = next_id + thread_total
  return wrk.format("GET", path .. user_id)
end

local function next_burst_request()
  if next_id > last_id then
    return stop_walk()
  end
  local ids = {}
  for user_id = next_id, math.min(next_id + batch_size - 1, last_id) do
    ids[#ids + 1] = user_id
  end
  copies_left = copies_left - 1
  if copies_left == 0 then
    copies_left = copies
    next_id = next_id + batch_size
  end
  return wrk.format("GET", path .. "?ids=" .. table.concat(ids, ","))
end

local function random_id()
  return math.random(first_id, last_id)
end

function request()
  if scenario == "fixed" then
    return wrk.format("GET", path)
  elseif scenario == "get-random" or scenario == "get-not-modified" then
    return wrk.format("GET", path .. random_id())
  elseif scenario == "get-sequential" then
    return next_sequential_request()
  elseif scenario == "get-burst" then
    return next_burst_request()
  elseif scenario == "get-batch" then
    local ids = {}
    for i = 1, batch_size do
      ids[i] = random_id()
    end
    return wrk.format("GET", path .. "?ids=" .. table.concat(ids, ","))
  end
  counter = counter + 1
  if scenario == "patch" then
    local body = string.format('{"first_name": "Patched%d-%d"}', thread_index, counter)
    return wrk.format("PATCH", path .. random_id(), nil, body)
  end
  local name = string.format("bench-%s-%d-%d", run_id, thread_index, counter)
  local body = string.format(
    '{"username": "%s", "email": "%s@example.com", "first_name": "Bench", "last_name": "Create"}',
    name, name)
  return wrk.format("POST", path, nil, body)
end

-- The whole latency histogram (distinct values in µs, with their counts), so that
-- runs can be merged and their percentiles taken over all their requests.
function done(summary, latency, requests)
  local errors = summary.errors
  local histogram = {}
  for i = 1, #latency do
    local value, count = latency(i)
    histogram[i] = string.format("[%d, %d]", value, count)
  end
  io.stdout:write(string.format(
    'BENCH-RESULT {"requests": %d, "duration_us": %d, "socket_errors": %d, '
      .. '"http_errors": %d, "latency_us": [%s]}\n',
    summary.requests, summary.duration,
    errors.connect + errors.read + errors.write + errors.timeout, errors.status,
    table.concat(histogram, ", ")))
end
