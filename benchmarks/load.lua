-- wrk script for benchmarks/http_load.py: 80 % GET recommendations, 10 % GET similar items,
-- 10 % POST /v1/events. Each connection waits NW_DELAY_MS between a response and its next
-- request (wrk's delay() hook), so connections x (1000 / (delay + latency)) is the offered
-- rate. Latency excludes the pacing delay.
local pause = tonumber(os.getenv("NW_DELAY_MS") or "245")
local key = os.getenv("NW_API_KEY") or ""
local users = tonumber(os.getenv("NW_USERS") or "610")
local items = {}
for item in string.gmatch(os.getenv("NW_ITEMS") or "1", "[^,]+") do
  table.insert(items, item)
end
function init(args)
  math.randomseed(os.time() + math.random(1, 1000000))
  first = true
end

function delay()
  if first then  -- a random phase, so that connections do not fire in lockstep
    first = false
    return math.random(0, pause)
  end
  return pause
end

function request()
  local r = math.random(1, 10)
  if r <= 8 then
    return wrk.format("GET", "/v1/users/" .. math.random(1, users) .. "/recommendations?k=10")
  elseif r == 9 then
    return wrk.format("GET", "/v1/items/" .. items[math.random(1, #items)] .. "/similar?k=10")
  end
  local body = string.format('{"user_id": "%d", "item_id": "%s", "rating": %.1f}',
    math.random(1, users), items[math.random(1, #items)], math.random(1, 10) / 2)
  return wrk.format("POST", "/v1/events",
    {["Content-Type"] = "application/json", ["X-API-Key"] = key}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'NWJSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_ms": %.3f, ' ..
    '"p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
end
