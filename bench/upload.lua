-- wrk script: POST a fixed body of UPLOAD_BYTES bytes (default 1 MiB) on every
-- request. The body is built once per wrk thread; wrk sends it with a
-- Content-Length header on each keep-alive connection.
local bytes = tonumber(os.getenv("UPLOAD_BYTES") or "") or 1048576

wrk.method = "POST"
wrk.body = string.rep("x", bytes)
wrk.headers["Content-Type"] = "application/octet-stream"

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
