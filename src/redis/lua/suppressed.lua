-- The suppressed strategy of src/suppressed.rs, past its hot path (suppressed_hot.lua,
-- whose HMGET `state` this reuses).  Counters 'o' (observed) and 'd' (declined; accepted =
-- observed - declined, so an admitted call writes one counter): open bucket counts 'co' /
-- 'cd', totals 'to' / 'td'; 'r' latest rate; 'sf' / 'sfu' the cached factor and the ms
-- until which it may be reused.
-- ARGV[5] hard limit factor, ARGV[6] cache ms.
-- mode 'i' (inc): ARGV[7] rate, ARGV[8] count, ARGV[9] capacity, ARGV[10] the draw in [0, 1).
--   Returns {0, accepted, reset} (allowed below capacity) or {1, is_allowed (0/1), factor as
--   a string, accepted, reset}: accepted usage after the call and the ms until the oldest
--   live bucket expires.
-- mode 'f' (get_suppression_factor): returns the factor now as a string; records nothing.

local COUNTERS = {'o', 'd'}
local hard_factor = tonumber(ARGV[5])
local exists = load(state, COUNTERS)

-- What an increment's answer carries after the decision: the accepted usage and the ms
-- until the oldest live bucket expires (0 for a key with no state).
local function usage()
  local reset = 0
  if newest then reset = expires_at(tonumber(oldest or newest)) - now end
  return totals['o'] - totals['d'], reset
end

local rate, count, cap, rate_changed
if mode == 'i' then
  rate = tonumber(ARGV[7])
  count = tonumber(ARGV[8])
  cap = tonumber(ARGV[9])
  rate_changed = not exists or tonumber(state[7]) ~= rate
  if rate_changed then redis.call('HSET', hash, 'r', ARGV[7], 'sfu', 0) end
  -- config::capacity::fits_observed: past MAX_OBSERVED nothing is recorded (the local
  -- core's rule), so no total loses exactness or overflows.
  if count > MAX_OBSERVED - totals['o'] then
    settle()
    local used, reset = usage()
    return {1, 0, '1', used, reset}
  end
  -- Below capacity (and under the hard limit): admitted.
  if not reaches(totals['o'], cap * hard_factor)
    and fits(totals['o'] - totals['d'] + count, cap) then
    add(COUNTERS, {count, 0})
    local used, reset = usage()
    return {0, used, reset}
  end
end

-- Past this point a call is over capacity, or asks for the factor.

-- Records `count` observed units, `declined` of them declined, in the bucket of now.
local function record(declined)
  add(COUNTERS, {count, declined})
end

local function show(sf) return string.format('%.17g', sf) end

if mode == 'i' then
  if reaches(totals['o'], cap * hard_factor) then
    record(count)
    local used, reset = usage()
    return {1, 0, '1', used, reset}
  end
  local cache = redis.call('HMGET', hash, 'sfu', 'sf')
  local sf
  if not rate_changed and now < (tonumber(cache[1]) or 0) then
    sf = tonumber(cache[2])
  else
    sf = formula(rate)
    redis.call('HSET', hash, 'sf', show(sf), 'sfu', now + tonumber(ARGV[6]))
  end
  local allowed = tonumber(ARGV[10]) >= sf
  if allowed then record(0) else record(count) end
  local used, reset = usage()
  return {1, allowed and 1 or 0, show(sf), used, reset}
end

-- mode 'f'
settle()
if not exists then return '0' end
rate = tonumber(state[7])
cap = rate * window_s
if reaches(totals['o'], cap * hard_factor) then return '1' end
if fits(totals['o'] - totals['d'] + 1, cap) then return '0' end
return show(formula(rate))
