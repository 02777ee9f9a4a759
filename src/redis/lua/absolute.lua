-- The absolute strategy of src/absolute.rs, past its hot path (absolute_hot.lua, whose
-- HMGET `state` this reuses).  One counter, '': open bucket count 'c', total 't'.
-- mode 'i' (inc): ARGV[5] rate, ARGV[6] count, ARGV[7] capacity (rate × window, from Rust).
-- mode 'c' (is_allowed): one unit at the key's latest rate; records nothing.
-- Returns {0, accepted usage, ms until the oldest live bucket expires} (allowed; a check of
-- an unknown key: {0}) or {1, retry_after_ms, remaining_after_waiting}; retry -1 = never.

local COUNTERS = {''}
local exists = load(state, COUNTERS)

local count, cap
if mode == 'i' then
  count = tonumber(ARGV[6])
  cap = tonumber(ARGV[7])
  -- The key's latest rate, for is_allowed (a rejected key always exists), written with the
  -- call's next write of the hash: add's, or settle's below.
  if not exists or state[5] ~= ARGV[5] then
    unsaved[#unsaved + 1] = 'r'
    unsaved[#unsaved + 1] = ARGV[5]
  end
  if fits(totals[''] + count, cap) then
    add(COUNTERS, {count})
    return {0, totals[''], expires_at(tonumber(oldest or newest)) - now}
  end
else
  -- mode 'c'
  settle()
  if not exists then return {0} end
  count = 1
  cap = tonumber(state[5]) * window_s
  if fits(totals[''] + 1, cap) then
    return {0, totals[''], expires_at(tonumber(oldest or newest)) - now}
  end
end

settle()

-- Rejected: the wait until enough of the oldest buckets expire that `count` fits.
local wait, left = release(COUNTERS, function(left) return fits(left[''] + count, cap) end)
if wait < 0 then return {1, -1, 0} end
return {1, wait, left['']}
