-- wrk script for bench/local_inference.py: POST the bytes of $WRK_BODY_FILE on every request
-- and print one machine-readable line when the run ends:
--   WRKJSON {"requests":..,"duration_us":..,"p50_us":..,"p99_us":..,"err_status":..,...}
-- $WRK_CONTENT_TYPE sets Content-Type (default application/json); a non-empty
-- $WRK_HEADER_LENGTH adds Inference-Header-Content-Length (KServe v2 binary tensor extension).
-- By hand:  WRK_BODY_FILE=body.json wrk -t1 -c16 -d10s -s bench/wrk_post.lua URL

local path = assert(os.getenv("WRK_BODY_FILE"), "set WRK_BODY_FILE")
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
local header_length = os.getenv("WRK_HEADER_LENGTH") or ""
if header_length ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header_length
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
