-- The filter benchmark's Lua baseline: what the sidestream filter does to a
-- plain (non-stream) request, written for Envoy's Lua filter (LuaJIT).
--
--  1. Trace: a valid W3C traceparent (version, lengths, lowercase hex,
--     all-zero ids and version ff rejected) keeps its trace id and gets a new
--     parent id for this hop; anything else starts a new trace (sampled:
--     ratio 1.0). x-request-id is set when absent. The trace id is echoed on
--     the response in x-trace-id.
--  2. Release colouring: a client-sent x-sidestream-group is dropped; then
--     x-env-tag == canary, cookie sidestream-grey=1, 10% of users by a stable
--     hash of policy name + x-user-id (basis points), else stable. The group
--     goes into x-sidestream-group and the route cache is cleared.
--  3. Stream detection (SSE accept, WebSocket upgrade, gRPC content type).
--     Admission needs state shared by all workers with compare-and-swap,
--     which Envoy's Lua filter does not offer; benchmark requests are not
--     streams, so the sidestream filter does no admission work for them
--     either.
--
-- Differences, stated honestly: ids come from math.random (LuaJIT's PRNG),
-- not a CSPRNG; the percentage hash is FNV-1a, not xxh3; no stats counters
-- (the Lua filter has no custom-stats API).

local POLICY = "grey"
local PERCENT_BP = 1000 -- 10.00% in basis points

math.randomseed(os.time())

local function random_hex(words)
  local parts = {}
  for i = 1, words do
    parts[i] = string.format("%08x", math.random(0, 4294967295))
  end
  return table.concat(parts)
end

local function all_zero(hex)
  return hex:find("[^0]") == nil
end

-- Returns trace id and flags of a valid traceparent, or nil.
local function parse_traceparent(value)
  if value == nil then
    return nil
  end
  local version, trace_id, parent_id, flags =
    value:match("^(%x%x)%-(%x+)%-(%x+)%-(%x%x)")
  if version == nil or #trace_id ~= 32 or #parent_id ~= 16 then
    return nil
  end
  if value:find("[A-F]") or version == "ff" then
    return nil
  end
  local rest = #value - 55
  if version == "00" and rest ~= 0 then
    return nil
  end
  if rest > 0 and value:sub(56, 56) ~= "-" then
    return nil
  end
  if all_zero(trace_id) or all_zero(parent_id) then
    return nil
  end
  return trace_id, flags
end

local function cookie(header, name)
  if header == nil then
    return nil
  end
  for pair in header:gmatch("[^;]+") do
    local k, v = pair:match("^%s*([^=]+)=(.*)$")
    if k == name then
      return (v:gsub("%s+$", ""))
    end
  end
  return nil
end

-- FNV-1a (32-bit) over policy name + value, in basis points. Products are
-- split so every intermediate stays exact in a double.
local bxor = bit.bxor
local function mul32(a, b)
  local lo, hi = a % 65536, math.floor(a / 65536)
  return (lo * b + ((hi * b) % 65536) * 65536) % 4294967296
end

local function bucket(value)
  local h = 2166136261
  local s = POLICY .. "\0" .. value
  for i = 1, #s do
    h = mul32(bxor(h, s:byte(i)) % 4294967296, 16777619)
  end
  return h % 10000
end

local function is_stream(headers)
  local accept = headers:get("accept")
  if accept ~= nil and accept:find("text/event-stream", 1, true) then
    return true
  end
  local upgrade = headers:get("upgrade")
  if upgrade ~= nil and upgrade:lower() == "websocket" then
    return true
  end
  local ct = headers:get("content-type")
  return ct ~= nil and ct:sub(1, 16) == "application/grpc"
end

function envoy_on_request(handle)
  local headers = handle:headers()

  -- 1. trace
  local trace_id, flags = parse_traceparent(headers:get("traceparent"))
  if trace_id == nil then
    trace_id = random_hex(4)
    flags = "01"
    headers:remove("tracestate")
  end
  headers:replace("traceparent", "00-" .. trace_id .. "-" .. random_hex(2) .. "-" .. flags)
  handle:streamInfo():dynamicMetadata():set("sidestream", "trace_id", trace_id)
  if headers:get("x-request-id") == nil then
    local r = random_hex(4)
    headers:add("x-request-id", string.format("%s-%s-4%s-%x%s-%s",
      r:sub(1, 8), r:sub(9, 12), r:sub(14, 16),
      8 + math.random(0, 3), r:sub(18, 20), r:sub(21, 32)))
  end

  -- 2. release group
  headers:remove("x-sidestream-group")
  local group = "stable"
  if headers:get("x-env-tag") == "canary" then
    group = "canary"
  elseif cookie(headers:get("cookie"), "sidestream-grey") == "1" then
    group = "canary"
  else
    local user = headers:get("x-user-id")
    if user ~= nil and bucket(user) < PERCENT_BP then
      group = "canary"
    end
  end
  headers:add("x-sidestream-group", group)
  handle:clearRouteCache()

  -- 3. stream detection (see the header comment)
  if is_stream(headers) then
    handle:streamInfo():dynamicMetadata():set("sidestream", "stream", "1")
  end
end

function envoy_on_response(handle)
  local meta = handle:streamInfo():dynamicMetadata():get("sidestream")
  if meta ~= nil and meta["trace_id"] ~= nil then
    handle:headers():replace("x-trace-id", meta["trace_id"])
  end
end
