-- Prints one machine-readable line at the end of a wrk run, read by compare.sh:
--   PCBENCH {"requests":..,"duration_us":..,"p50_us":..,"p99_us":..,...}
-- Latencies come straight from wrk's histogram, in microseconds.
-- Used on its own for the GET run and loaded by upload.lua for the POST run.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'PCBENCH {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
