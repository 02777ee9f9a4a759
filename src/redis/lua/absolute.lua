-- The absolute strategy of src/absolute.rs.  Counter '' : bucket field = id, total = 't'.
-- mode 'i' (inc): ARGV[5] rate, ARGV[6] count, ARGV[7] capacity (rate × window, from Rust).
-- mode 'c' (is_allowed): one unit at the key's latest rate; records nothing.
-- Returns {0} (allowed) or {1, retry_after_ms, remaining_after_waiting}; retry -1 = never.

local COUNTERS = {''}

-- Walks the buckets oldest first, as if each expired in turn, until `count` fits.
local function rejection(used, count, cap)
  local left = used
  local from = 0
  while true do
    local chunk = redis.call('LRANGE', ids, from, from + 31)
    if #chunk == 0 then return {1, -1, 0} end
    for _, id in ipairs(chunk) do
      left = left - (tonumber(redis.call('HGET', hash, id)) or 0)
      if fits(left + count, cap) then
        local wait = expires_at(tonumber(id)) - now
        if wait < 0 then wait = 0 end
        return {1, wait, left}
      end
    end
    from = from + 32
  end
end

expire(COUNTERS)
local used = total('')

if mode == 'i' then
  local count = tonumber(ARGV[6])
  local cap = tonumber(ARGV[7])
  if fits(used + count, cap) then
    add(COUNTERS, {count})
    redis.call('HSET', hash, 'r', ARGV[5])
    return {0}
  end
  -- Rejected: nothing is recorded, but the key's latest rate is (the hash exists: used > 0).
  redis.call('HSET', hash, 'r', ARGV[5])
  return rejection(used, count, cap)
end

-- mode 'c'
local rate = tonumber(redis.call('HGET', hash, 'r'))
if not rate then return {0} end
local cap = rate * window_s
if fits(used + 1, cap) then return {0} end
return rejection(used, 1, cap)
