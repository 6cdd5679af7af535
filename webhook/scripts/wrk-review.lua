-- wrk script for webhook/scripts/load-attack.sh: POSTs the AdmissionReview in $WRK_BODY on every
-- connection and counts answers by HTTP status. With $WRK_REQUESTS (spread over $WRK_THREADS
-- threads) each thread stops once it has its share of answers and says so by creating the file
-- $WRK_DONE_DIR/<thread>: wrk itself always runs for its -d duration, so the caller sends it
-- SIGINT once every thread is done, which makes wrk end early and report. At the end it prints
-- `wrk-review: answered=N status200=N other=N socket_errors=N`.
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  ok, other = 0, 0
  local total = tonumber(os.getenv("WRK_REQUESTS") or "")
  local count = tonumber(os.getenv("WRK_THREADS") or "1")
  -- This thread's share of the burst (the first threads take the remainder).
  if total then
    quota = math.floor(total / count) + ((id <= total % count) and 1 or 0)
  end
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
  if quota and ok + other >= quota then
    quota = nil
    local f = io.open(os.getenv("WRK_DONE_DIR") .. "/" .. id, "w")
    if f then f:close() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local ok_all, other_all = 0, 0
  for _, t in ipairs(threads) do
    ok_all = ok_all + t:get("ok")
    other_all = other_all + t:get("other")
  end
  local e = summary.errors
  io.write(string.format("wrk-review: answered=%d status200=%d other=%d socket_errors=%d\n",
    ok_all + other_all, ok_all, other_all, e.connect + e.read + e.write + e.timeout))
end
