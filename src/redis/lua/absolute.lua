-- The absolute strategy of src/absolute.rs.  One counter, '': bucket field = id, total 't'.
-- mode 'i' (inc): ARGV[5] rate, ARGV[6] count, ARGV[7] capacity (rate × window, from Rust).
-- mode 'c' (is_allowed): one unit at the key's latest rate; records nothing.
-- Returns {0} (allowed) or {1, retry_after_ms, remaining_after_waiting}; retry -1 = never.
--
-- The common case (the key's newest bucket is the bucket of now and nothing expired) is
-- written out: TIME, one HMGET, one HSET, and no closure or table beyond window.lua's (each
-- costs the script time).

local state = redis.call('HMGET', hash, 'n', 'l', 't', current, 'r')
local hot = state[1] == current and (tonumber(state[2]) or 0) >= oldest_live(now)
local exists
current_counts[''] = tonumber(state[4]) or 0
if hot then
  newest, oldest = state[1], state[2]
  totals[''] = tonumber(state[3]) or 0
  exists = true
else
  exists = load(state, {''})
end

local count, cap
if mode == 'i' then
  count = tonumber(ARGV[6])
  cap = tonumber(ARGV[7])
  local used = totals['']
  -- The key's latest rate, for is_allowed (a rejected key always exists).
  local new_rate = not exists or state[5] ~= ARGV[5]
  if fits(used + count, cap) then
    if hot then
      if new_rate then
        redis.call('HSET', hash, current, string.format('%d', current_counts[''] + count),
          't', string.format('%d', used + count), 'r', ARGV[5])
      else
        redis.call('HSET', hash, current, string.format('%d', current_counts[''] + count),
          't', string.format('%d', used + count))
      end
    else
      add({''}, {count})
      if new_rate then redis.call('HSET', hash, 'r', ARGV[5]) end
    end
    return {0}
  end
  if new_rate then redis.call('HSET', hash, 'r', ARGV[5]) end
else
  -- mode 'c'
  if not exists then return {0} end
  count = 1
  cap = tonumber(state[5]) * window_s
  if fits(totals[''] + 1, cap) then return {0} end
end

-- Rejected: walk the buckets oldest first, as if each expired in turn, until `count` fits.
local left = totals['']
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
