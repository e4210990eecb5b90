-- wrk script for bench/http_boot.py: each request asks for a random node's iPXE script and
-- counts every answer that is not that node's install script as a failure.
--   wrk -c 200 -d 10s -s bench/wrk_boot.lua http://HOST:PORT/ -- MACS_FILE
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  macs = {}
  for line in io.lines(args[1]) do
    if #line > 0 then macs[#macs + 1] = line end
  end
  bad = 0
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  return wrk.format("GET", "/boot/" .. macs[math.random(#macs)] .. ".ipxe")
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, "provisioner.mode=install", 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format("RESULT requests=%d bad=%d errors=%d p50_ms=%.2f p99_ms=%.2f seconds=%.3f\n",
    summary.requests, b, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
