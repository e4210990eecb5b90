-- wrk script for bench/api_status.py: each request reads the status of every node with one of
-- the benchmark's API tokens, accepting gzip (as HTTP client libraries do); an answer that is not
-- a 200 gzipped status counts as a failure (bench/api_status.py checks its nodes before the storm).
--   wrk -c 50 -d 10s -s bench/wrk_api.lua http://HOST:PORT/ -- TOKENS_FILE NODES
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  tokens = {}
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  nodes = tonumber(args[2])
  bad = 0
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local token = tokens[math.random(#tokens)]
  return wrk.format("GET", "/api/v1/status", {["Authorization"] = "Bearer " .. token,
                                              ["Accept-Encoding"] = "gzip"})
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    return
  end
  -- gzipped: the bench checks one answer's nodes before the storm; here, that it is one
  if headers["Content-Encoding"] ~= "gzip" or #body < 1000 then bad = bad + 1 end
end

function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format("RESULT requests=%d bad=%d errors=%d p50_ms=%.2f p95_ms=%.2f p99_ms=%.2f seconds=%.3f\n",
    summary.requests, b, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    summary.duration / 1e6))
end
