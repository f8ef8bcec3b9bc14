-- The wrk side of every HTTP scenario; bench/load.py runs it.
--
-- wrk -s bench/scenarios.lua URL -- SCENARIO TOKEN THREADS [ARGUMENT]
--   true-floor              GET /bench/true-floor (no authentication, no I/O)
--   floor                   GET /bench/floor
--   get-zipf USERS          GET /api/user/<id>, ids from a Zipf law over 1..USERS (a hot set)
--   get-random USERS        GET /api/user/<id>, ids drawn uniformly from 1..USERS
--   get-sequential USERS    GET /api/user/<id>, each id in 1..USERS once, then stop
--   get-batch USERS:N       GET /api/user?ids=<N ids drawn uniformly from 1..USERS>
--   get-not-modified USERS  GET /api/user/<id> with If-None-Match: * (a 304 on a hit)
--   create RUN_ID           POST /api/user, a new username on every request
--
-- Each thread is its own Lua state: setup() numbers them so that they split the
-- ids (get-sequential) and never repeat a username (create) without talking.
-- wrk calls request() once on the first thread to check the script, and never
-- sends that request: with get-sequential, id 1 is the one never asked for.
-- done() prints one line, BENCH-RESULT {json}, that bench/load.py parses.

local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

local scenario, floor_request, user_count, thread_total, next_id, run_id, counter, batch_size
local zipf_cdf
local exhausted = false

function init(args)
  scenario = args[1]
  wrk.headers["Authorization"] = "Token " .. args[2]
  -- As the TLS-terminating proxy in front of production says: no redirect to https.
  wrk.headers["X-Forwarded-Proto"] = "https"
  thread_total = tonumber(args[3])
  floor_request = wrk.format("GET", "/bench/floor")
  if scenario == "true-floor" then
    floor_request = wrk.format("GET", "/bench/true-floor")
  elseif scenario == "get-zipf" then
    -- P(rank k) proportional to 1/k: a few ids take most requests, as real traffic's do.
    user_count = tonumber(args[4])
    zipf_cdf = {}
    local total = 0
    for k = 1, user_count do
      total = total + 1 / k
      zipf_cdf[k] = total
    end
    for k = 1, user_count do
      zipf_cdf[k] = zipf_cdf[k] / total
    end
    math.randomseed(1 + thread_index)
  elseif scenario == "get-random" then
    user_count = tonumber(args[4])
    math.randomseed(1 + thread_index)
  elseif scenario == "get-sequential" then
    user_count = tonumber(args[4])
    next_id = 1 + thread_index
  elseif scenario == "get-batch" then
    local users, size = string.match(args[4], "(%d+):(%d+)")
    user_count, batch_size = tonumber(users), tonumber(size)
    math.randomseed(1 + thread_index)
  elseif scenario == "get-not-modified" then
    user_count = tonumber(args[4])
    math.randomseed(1 + thread_index)
    wrk.headers["If-None-Match"] = "*"
  elseif scenario == "create" then
    run_id = args[4]
    counter = 0
    wrk.headers["Content-Type"] = "application/json"
  elseif scenario ~= "floor" then
    error("unknown scenario: " .. tostring(scenario))
  end
end

local function next_sequential_request()
  if next_id > user_count then
    -- This thread's ids are done: stop its loop and tell bench/load.py, which
    -- interrupts wrk once every thread has said so. The request returned here is
    -- never answered (the loop stops), so it only has to be harmless.
    if not exhausted then
      exhausted = true
      io.stdout:write("ids-exhausted\n")
      io.stdout:flush()
      wrk.thread:stop()
    end
    return floor_request
  end
  local user_id = next_id
  next_id = next_id + thread_total
  return wrk.format("GET", "/api/user/" .. user_id)
end

local function zipf_id()
  local u, low, high = math.random(), 1, user_count
  while low < high do
    local middle = math.floor((low + high) / 2)
    if zipf_cdf[middle] < u then low = middle + 1 else high = middle end
  end
  return low
end

function request()
  if scenario == "floor" or scenario == "true-floor" then
    return floor_request
  elseif scenario == "get-zipf" then
    return wrk.format("GET", "/api/user/" .. zipf_id())
  elseif scenario == "get-random" then
    return wrk.format("GET", "/api/user/" .. math.random(1, user_count))
  elseif scenario == "get-sequential" then
    return next_sequential_request()
  elseif scenario == "get-batch" then
    local ids = {}
    for i = 1, batch_size do
      ids[i] = math.random(1, user_count)
    end
    return wrk.format("GET", "/api/user?ids=" .. table.concat(ids, ","))
  elseif scenario == "get-not-modified" then
    return wrk.format("GET", "/api/user/" .. math.random(1, user_count))
  end
  counter = counter + 1
  local name = string.format("bench-%s-%d-%d", run_id, thread_index, counter)
  local body = string.format(
    '{"username": "%s", "email": "%s@example.com", "first_name": "Bench", "last_name": "Create"}',
    name, name)
  return wrk.format("POST", "/api/user", nil, body)
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
