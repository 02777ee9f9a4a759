-- The suppressed strategy of src/suppressed.rs.  Counters 'o' (observed) and 'd' (declined;
-- accepted = observed - declined, so an admitted call writes one counter): bucket fields
-- 'o'..id / 'd'..id, totals 'to' / 'td'; 'r' latest rate; 'sf' / 'sfu' the cached factor
-- and the ms until which it may be reused.
-- ARGV[5] hard limit factor, ARGV[6] cache ms.
-- mode 'i' (inc): ARGV[7] rate, ARGV[8] count, ARGV[9] capacity, ARGV[10] the draw in [0, 1).
--   Returns {0} (allowed below capacity) or {1, is_allowed (0/1), factor as a string}.
-- mode 'f' (get_suppression_factor): returns the factor now as a string; records nothing.
--
-- The common case (the key's newest bucket is the bucket of now, nothing expired, the rate
-- unchanged) is written out: TIME, one HMGET, one HSET.

local COUNTERS = {'o', 'd'}
local RECENT_MS = 1000
local hard_factor = tonumber(ARGV[5])

-- Observed usage in the buckets that overlap the last second, newest first.
local function recent_observed()
  local cutoff = now - RECENT_MS
  if cutoff < 0 then cutoff = 0 end
  local sum = 0
  local from = -1
  while true do
    local chunk = redis.call('LRANGE', ids, from - 31, from)
    if #chunk == 0 then return sum end
    for i = #chunk, 1, -1 do
      local id = chunk[i]
      if (tonumber(id) + 1) * G <= cutoff then return sum end
      sum = sum + (tonumber(redis.call('HGET', hash, 'o' .. id)) or 0)
    end
    if #chunk < 32 then return sum end
    from = from - 32
  end
end

-- Observed units per second over the time the bucket positions from `first_bucket` on
-- cover, up to now (at least a second): suppressed::factor_of.
local function per_second(observed, first_bucket)
  local covered = now - first_bucket * G
  if covered < RECENT_MS then covered = RECENT_MS end
  return observed * 1000 / covered
end

local function formula(rate)
  local average = per_second(totals['o'], oldest_live(now))
  local last_second = per_second(recent_observed(), math.floor(math.max(now - RECENT_MS, 0) / G))
  local perceived = math.max(average, last_second)
  if perceived <= 0 then return 0 end
  local sf = 1 - rate / perceived
  if sf < 0 then sf = 0 elseif sf > 1 then sf = 1 end
  return sf
end

local function show(sf) return string.format('%.17g', sf) end

-- Records `count` observed units, `declined` of them declined, in the bucket of now.
local function record(count, declined, hot)
  if not hot then
    add(COUNTERS, {count, declined})
    return
  end
  local o = string.format('%d', current_counts['o'] + count)
  local to = string.format('%d', totals['o'] + count)
  if declined == 0 then
    redis.call('HSET', hash, 'o' .. current, o, 'to', to)
  else
    redis.call('HSET', hash, 'o' .. current, o, 'to', to,
      'd' .. current, string.format('%d', current_counts['d'] + declined),
      'td', string.format('%d', totals['d'] + declined))
  end
end

local state = redis.call('HMGET', hash, 'n', 'l', 'to', 'td', 'o' .. current, 'd' .. current,
  'r', 'sfu', 'sf')
local hot = state[1] == current and (tonumber(state[2]) or 0) >= oldest_live(now)
local exists
current_counts['o'] = tonumber(state[5]) or 0
current_counts['d'] = tonumber(state[6]) or 0
if hot then
  newest, oldest = state[1], state[2]
  totals['o'] = tonumber(state[3]) or 0
  totals['d'] = tonumber(state[4]) or 0
  exists = true
else
  exists = load(state, COUNTERS)
end

if mode == 'i' then
  local rate = tonumber(ARGV[7])
  local count = tonumber(ARGV[8])
  local cap = tonumber(ARGV[9])
  local cached_until = tonumber(state[8]) or 0
  if not exists or tonumber(state[7]) ~= rate then
    redis.call('HSET', hash, 'r', ARGV[7], 'sfu', 0)
    cached_until = 0
  end
  if reaches(totals['o'], cap * hard_factor) then
    record(count, count, hot)
    return {1, 0, '1'}
  end
  if fits(totals['o'] - totals['d'] + count, cap) then
    record(count, 0, hot)
    return {0}
  end
  local sf
  if now < cached_until then
    sf = tonumber(state[9])
  else
    sf = formula(rate)
    redis.call('HSET', hash, 'sf', show(sf), 'sfu', now + tonumber(ARGV[6]))
  end
  local allowed = tonumber(ARGV[10]) >= sf
  if allowed then record(count, 0, hot) else record(count, count, hot) end
  return {1, allowed and 1 or 0, show(sf)}
end

-- mode 'f'
if not exists then return '0' end
local rate = tonumber(state[7])
local cap = rate * window_s
if reaches(totals['o'], cap * hard_factor) then return '1' end
if fits(totals['o'] - totals['d'] + 1, cap) then return '0' end
return show(formula(rate))
