-- wrk script for bench/proxy_overhead.py: prints one JSON line (prefixed "WRK-JSON ") with
-- counts and latency percentiles in microseconds, exactly as wrk measured them, instead of the
-- rounded human units of its --latency report.
-- WRK_BODY_BYTES=N (env) turns each request into a POST of N bytes.
local body_bytes = tonumber(os.getenv("WRK_BODY_BYTES") or "0")
if body_bytes > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("x", body_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
