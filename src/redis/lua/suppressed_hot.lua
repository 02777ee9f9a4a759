-- The suppressed strategy's hot path: an increment below capacity (and under the hard
-- limit) into the open bucket, when that is the bucket of now, nothing expired and the rate
-- is the key's latest.  TIME (head.lua), one HMGET, one HSET, no closure.  The rest is in
-- suppressed.lua.
-- ARGV[5] hard limit factor, ARGV[6] cache ms.
-- mode 'i' (inc): ARGV[7] rate, ARGV[8] count, ARGV[9] capacity, ARGV[10] the draw in [0, 1).
-- Returns {0, accepted usage after the call, ms until the oldest live bucket expires}
-- (allowed below capacity).

local state = redis.call('HMGET', hash, 'n', 'l', 'to', 'td', 'co', 'cd', 'r')
if mode == 'i' and state[1] == current and state[7] == ARGV[7]
  and tonumber(state[2]) >= live then
  -- A total or count the key never needed (nothing declined yet) is absent: 0.
  local before = tonumber(state[3]) or 0
  local observed = before + tonumber(ARGV[8])
  local cap = tonumber(ARGV[9])
  -- not reaches(observed before, cap × hard factor) and fits(accepted + count, cap)
  if before < cap * tonumber(ARGV[5]) * (1 - SLACK)
    and tonumber(ARGV[8]) <= MAX_OBSERVED - before
    and observed - (tonumber(state[4]) or 0) <= cap * (1 + SLACK) then
    redis.call('HSET', hash, 'co', string.format('%d', (tonumber(state[5]) or 0) + tonumber(ARGV[8])),
      'to', string.format('%d', observed))
    return {0, observed - (tonumber(state[4]) or 0), (tonumber(state[2]) + 1) * G + W - now}
  end
end
