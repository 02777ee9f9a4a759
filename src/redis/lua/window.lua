-- The sliding window of src/window.rs, for one limiter key (prepended to each script).
--
-- KEYS[1]: list of live bucket ids, oldest first.  KEYS[2]: hash of counts and totals.
-- ARGV[1]: "" to read the server's TIME, or a test clock's milliseconds (tests only).
-- ARGV[2]: window in whole seconds.  ARGV[3]: group in ms.  ARGV[4]: mode.
--
-- Bucket id = floor(t / g); bucket b counts while (b + 1) * g + W > t; an increment behind the
-- newest bucket (a clock that stepped back) counts in the newest one.  Work per call is the
-- buckets that expired since the last call (each is pushed once and popped once) plus a
-- bounded walk; no list is ever unpacked.

local ids, hash = KEYS[1], KEYS[2]
local window_s = tonumber(ARGV[2])
local W = window_s * 1000
local G = tonumber(ARGV[3])
local mode = ARGV[4]

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end

-- config::capacity: relative slack that absorbs f64 rounding.
local SLACK = 1e-9
local function fits(used, cap) return used <= cap * (1 + SLACK) end
local function reaches(used, limit) return used >= limit * (1 - SLACK) end

local function oldest_live(t)
  local s = t - W
  if s < 0 then s = 0 end
  return math.floor(s / G)
end
local function expires_at(id) return (id + 1) * G + W end

-- Drops the buckets that no longer count; `counters` names the per-bucket fields (bucket
-- field = counter .. id, total field = 't' .. counter).  If even the newest bucket is dead,
-- the key's state is dropped whole, as its TTL would have done.
local function expire(counters)
  local newest = redis.call('LINDEX', ids, -1)
  if not newest then return end
  local live = oldest_live(now)
  if tonumber(newest) < live then
    redis.call('DEL', ids, hash)
    return
  end
  while true do
    local oldest = redis.call('LINDEX', ids, 0)
    if tonumber(oldest) >= live then return end
    redis.call('LPOP', ids)
    for _, c in ipairs(counters) do
      local v = tonumber(redis.call('HGET', hash, c .. oldest))
      if v then
        redis.call('HINCRBY', hash, 't' .. c, -v)
        redis.call('HDEL', hash, c .. oldest)
      end
    end
  end
end

-- Records values[i] under counters[i] in the bucket of `now`, and keeps both keys' TTL at
-- the moment their newest bucket stops counting (at most W + g from now).
local function add(counters, values)
  local id = math.floor(now / G)
  local newest = redis.call('LINDEX', ids, -1)
  local bucket
  if newest and tonumber(newest) >= id then
    bucket = newest
  else
    bucket = string.format('%d', id)
    redis.call('RPUSH', ids, bucket)
  end
  for i, c in ipairs(counters) do
    local v = values[i]
    if v ~= 0 then
      redis.call('HINCRBY', hash, c .. bucket, v)
      redis.call('HINCRBY', hash, 't' .. c, v)
    end
  end
  local ttl = expires_at(tonumber(bucket)) - now
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', ids, ttl)
  redis.call('PEXPIRE', hash, ttl)
end

local function total(counter)
  return tonumber(redis.call('HGET', hash, 't' .. counter)) or 0
end
