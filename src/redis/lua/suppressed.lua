-- The suppressed strategy of src/suppressed.rs, past its hot path (suppressed_hot.lua,
-- whose HMGET `state` this reuses).  Counters 'o' (observed) and 'd' (declined; accepted =
-- observed - declined, so an admitted call writes one counter): open bucket counts 'co' /
-- 'cd', totals 'to' / 'td'; 'r' latest rate; 'sf' / 'sfu' the cached factor and the ms
-- until which it may be reused.
-- ARGV[5] hard limit factor, ARGV[6] cache ms.
-- mode 'i' (inc): ARGV[7] rate, ARGV[8] count, ARGV[9] capacity, ARGV[10] the draw in [0, 1).
--   Returns {0} (allowed below capacity) or {1, is_allowed (0/1), factor as a string}.
-- mode 'f' (get_suppression_factor): returns the factor now as a string; records nothing.

local COUNTERS = {'o', 'd'}
local RECENT_MS = 1000
local hard_factor = tonumber(ARGV[5])
local exists = load(state, COUNTERS)

local rate, count, cap, rate_changed
if mode == 'i' then
  rate = tonumber(ARGV[7])
  count = tonumber(ARGV[8])
  cap = tonumber(ARGV[9])
  rate_changed = not exists or tonumber(state[7]) ~= rate
  if rate_changed then redis.call('HSET', hash, 'r', ARGV[7], 'sfu', 0) end
  -- Below capacity (and under the hard limit): admitted.
  if not reaches(totals['o'], cap * hard_factor)
    and fits(totals['o'] - totals['d'] + count, cap) then
    add(COUNTERS, {count, 0})
    return {0}
  end
end

-- Past this point a call is over capacity, or asks for the factor.

-- Records `count` observed units, `declined` of them declined, in the bucket of now.
local function record(declined)
  add(COUNTERS, {count, declined})
end

-- The factor at `rate`, as suppressed::factor_of: the perceived rate is the larger of the
-- window's and the last second's observed units per second, each over the time its bucket
-- positions cover (at least a second).
local function formula(at_rate)
  local function per_second(observed, first_bucket)
    local covered = now - first_bucket * G
    if covered < RECENT_MS then covered = RECENT_MS end
    return observed * 1000 / covered
  end
  -- Observed usage in the buckets that overlap the last second, newest first.
  local cutoff = now - RECENT_MS
  if cutoff < 0 then cutoff = 0 end
  local recent = recent_sum('o', 1, cutoff)
  local average = per_second(totals['o'], live)
  local last_second = per_second(recent, math.floor(math.max(now - RECENT_MS, 0) / G))
  local perceived = math.max(average, last_second)
  if perceived <= 0 then return 0 end
  local sf = 1 - at_rate / perceived
  if sf < 0 then sf = 0 elseif sf > 1 then sf = 1 end
  return sf
end

local function show(sf) return string.format('%.17g', sf) end

if mode == 'i' then
  if reaches(totals['o'], cap * hard_factor) then
    record(count)
    return {1, 0, '1'}
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
  return {1, allowed and 1 or 0, show(sf)}
end

-- mode 'f'
settle()
if not exists then return '0' end
rate = tonumber(state[7])
cap = rate * window_s
if reaches(totals['o'], cap * hard_factor) then return '1' end
if fits(totals['o'] - totals['d'] + 1, cap) then return '0' end
return show(formula(rate))
