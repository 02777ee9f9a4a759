-- A limit set's hot path (after head.lua): a counted request that every limit admits into
-- its open bucket, when each limit's open bucket is the bucket of now and nothing of it
-- expired.  One HMGET per limit, one HSET per limit, no closure; the states read here are
-- kept in `states` for set.lua, which decides every other call.
-- ARGV as set.lua reads them: ARGV[5] cost, ARGV[7] n, then six values per limit.
-- Returns {0, then per limit: accepted, reset_ms} (allowed, no limit shedding).

local cost = tonumber(ARGV[5])
local n = tonumber(ARGV[7])
local states = {}
if mode == 'i' then
  local hot = true
  local counted = {}
  for i = 1, n do
    local b = 7 + (i - 1) * 6
    local w = tonumber(ARGV[b + 1]) * 1000
    local g = tonumber(ARGV[b + 2])
    local cap = tonumber(ARGV[b + 4])
    local lv = now - w
    if lv < 0 then lv = 0 end
    lv = math.floor(lv / g)
    local s
    if ARGV[b + 3] == 'a' then
      s = redis.call('HMGET', KEYS[2 * i], 'n', 'l', 't', 'c')
      local used = (tonumber(s[3]) or 0) + cost
      hot = tonumber(s[1]) == math.floor(now / g) and tonumber(s[2]) >= lv
        and used <= cap * (1 + SLACK)
      if hot then counted[i] = {used, (tonumber(s[4]) or 0) + cost, used, s[2], w, g} end
    else
      s = redis.call('HMGET', KEYS[2 * i], 'n', 'l', 'to', 'td', 'co', 'cd')
      local before = tonumber(s[3]) or 0
      local accepted = before - (tonumber(s[4]) or 0) + cost
      hot = tonumber(s[1]) == math.floor(now / g) and tonumber(s[2]) >= lv
        and before < tonumber(ARGV[b + 5]) * (1 - SLACK) and accepted <= cap * (1 + SLACK)
      if hot then
        counted[i] = {before + cost, (tonumber(s[5]) or 0) + cost, accepted, s[2], w, g}
      end
    end
    states[i] = s
    if not hot then break end
  end
  if hot then
    local reply = {0}
    for i = 1, n do
      local c = counted[i]
      if ARGV[7 + (i - 1) * 6 + 3] == 'a' then
        redis.call('HSET', KEYS[2 * i], 'c', string.format('%d', c[2]), 't', string.format('%d', c[1]))
      else
        redis.call('HSET', KEYS[2 * i], 'co', string.format('%d', c[2]), 'to', string.format('%d', c[1]))
      end
      local reset = (tonumber(c[4]) + 1) * c[6] + c[5] - now
      if reset > c[5] then reset = c[5] end
      reply[2 * i] = c[3]
      reply[2 * i + 1] = reset
    end
    return reply
  end
end
