-- The sliding window of src/window.rs, for one limiter key (prepended to each script).
--
-- KEYS[1]: list of live bucket ids, oldest first.  KEYS[2]: hash with, per bucket, one
-- field per counter (counter .. id), the running totals ('t' .. counter), the newest and
-- oldest bucket ids ('n', 'l') and the key's latest rate ('r').
-- ARGV[1]: "" to read the server's TIME, or a test clock's milliseconds (tests only).
-- ARGV[2]: window in whole seconds.  ARGV[3]: group in ms.  ARGV[4]: mode.
--
-- Bucket id = floor(t / g); bucket b counts while (b + 1) * g + W > t; an increment behind
-- the newest bucket (a clock that stepped back) counts in the newest one.  A call reads its
-- state with one HMGET and, in the common case, writes it with one HSET; only the buckets that expired since the previous call are popped
-- (each bucket is pushed once and popped once) and no list is ever unpacked.  Both keys
-- expire when their newest bucket stops counting (at most W + g from its creation).

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

local function expires_at(id) return (id + 1) * G + W end

-- The oldest bucket still live at t.
local function oldest_live(t)
  local s = t - W
  if s < 0 then s = 0 end
  return math.floor(s / G)
end

-- The key's window: `newest` / `oldest` are the bucket ids as stored (strings) or false,
-- `totals[c]` the running total of counter c; `current` is the id of the bucket of now and
-- `current_counts[c]` counter c in it (the scripts read both with their HMGET, so an
-- increment there is one HSET).
local newest, oldest
local totals = {}
local current_id = math.floor(now / G)
local current = string.format('%d', current_id)
local current_counts = {}

-- Takes the values of one HMGET of 'n', 'l', then 't' .. c for each counter, and drops the
-- buckets that no longer count.  If even the newest bucket is dead the state is dropped
-- whole, as the keys' TTL would have done.  Returns false when the key has no state.
local function load(values, counters)
  newest, oldest = values[1], values[2]
  for i, c in ipairs(counters) do totals[c] = tonumber(values[i + 2]) or 0 end
  if not newest then return false end
  local live = oldest_live(now)
  if tonumber(newest) < live then
    redis.call('DEL', ids, hash)
    newest, oldest = false, false
    for _, c in ipairs(counters) do
      totals[c] = 0
      current_counts[c] = 0
    end
    return false
  end
  if not oldest or tonumber(oldest) >= live then return true end
  local dropped = {}
  for _, c in ipairs(counters) do dropped[c] = 0 end
  while true do
    local chunk = redis.call('LRANGE', ids, 0, 31)
    local gone = 0
    for i, id in ipairs(chunk) do
      if tonumber(id) >= live then
        oldest = id
        break
      end
      gone = i
      for _, c in ipairs(counters) do
        local v = tonumber(redis.call('HGET', hash, c .. id))
        if v then
          dropped[c] = dropped[c] + v
          redis.call('HDEL', hash, c .. id)
        end
      end
    end
    if gone > 0 then redis.call('LTRIM', ids, gone, -1) end
    if gone < 32 then break end
  end
  for _, c in ipairs(counters) do
    if dropped[c] ~= 0 then
      totals[c] = totals[c] - dropped[c]
      redis.call('HINCRBY', hash, 't' .. c, -dropped[c])
    end
  end
  redis.call('HSET', hash, 'l', oldest)
  return true
end

-- Records values[i] under counters[i] in bucket `id` (behind the newest bucket: in the
-- newest, which expires later, never earlier).  Into the bucket of now, whose counts the
-- script read into `current_counts` with its HMGET:
-- one HSET of the new counts and totals (the script is atomic, so that is an increment).
-- A new bucket is pushed and sets both keys' TTL to the moment it stops counting.
local function add_at(counters, id, values)
  local bucket = newest
  local fields = {}
  if bucket and id == current_id and bucket == current then
    for i, c in ipairs(counters) do
      local v = values[i]
      if v ~= 0 then
        current_counts[c] = current_counts[c] + v
        totals[c] = totals[c] + v
        fields[#fields + 1] = c .. bucket
        fields[#fields + 1] = string.format('%d', current_counts[c])
        fields[#fields + 1] = 't' .. c
        fields[#fields + 1] = string.format('%d', totals[c])
      end
    end
    redis.call('HSET', hash, unpack(fields))
    return
  end
  if not bucket or tonumber(bucket) < id then
    -- A new bucket: one HSET names it newest (and oldest if it is the only one) and sets
    -- its counts and the totals.
    bucket = string.format('%d', id)
    redis.call('RPUSH', ids, bucket)
    fields[1], fields[2] = 'n', bucket
    if not oldest then
      fields[3], fields[4] = 'l', bucket
      oldest = bucket
    end
    for i, c in ipairs(counters) do
      local v = values[i]
      if v ~= 0 then
        totals[c] = totals[c] + v
        fields[#fields + 1] = c .. bucket
        fields[#fields + 1] = string.format('%d', v)
        fields[#fields + 1] = 't' .. c
        fields[#fields + 1] = string.format('%d', totals[c])
      end
      if bucket == current then current_counts[c] = v end
    end
    redis.call('HSET', hash, unpack(fields))
    newest = bucket
    local ttl = expires_at(id) - now
    if ttl < 1 then ttl = 1 end
    redis.call('PEXPIRE', ids, ttl)
    redis.call('PEXPIRE', hash, ttl)
    return
  end
  for i, c in ipairs(counters) do
    local v = values[i]
    if v ~= 0 then
      redis.call('HINCRBY', hash, c .. bucket, v)
      redis.call('HINCRBY', hash, 't' .. c, v)
      totals[c] = totals[c] + v
    end
  end
end

-- Records values[i] under counters[i] in the bucket of `now`.
local function add(counters, values)
  add_at(counters, math.floor(now / G), values)
end

-- The sum of `counter` over the buckets that overlap (cutoff, now], newest first, as
-- `Window::recent` in src/window.rs: a walk of the newest buckets in chunks of 32, never an
-- unbounded unpack.
local function recent_sum(counter, cutoff)
  local sum = 0
  local from = -1
  while true do
    local chunk = redis.call('LRANGE', ids, from - 31, from)
    if #chunk == 0 then return sum end
    for i = #chunk, 1, -1 do
      local id = chunk[i]
      if (tonumber(id) + 1) * G <= cutoff then return sum end
      sum = sum + (tonumber(redis.call('HGET', hash, counter .. id)) or 0)
    end
    if #chunk < 32 then return sum end
    from = from - 32
  end
end
