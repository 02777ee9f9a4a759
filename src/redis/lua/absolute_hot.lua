-- The absolute strategy's hot path: an admitted increment into the open bucket, when the
-- open bucket is the bucket of now and nothing expired.  TIME (head.lua), one HMGET, one
-- HSET, and no closure or table beyond HMGET's reply.  The rest is in absolute.lua.
-- mode 'i' (inc): ARGV[5] rate, ARGV[6] count, ARGV[7] capacity (rate × window, from Rust).
-- Returns {0, accepted usage after the call, ms until the oldest live bucket expires}
-- (allowed): the admitted answer carries the key's usage, so nothing asks again.

local state = redis.call('HMGET', hash, 'n', 'l', 't', 'c', 'r')
if mode == 'i' and state[1] == current and tonumber(state[2]) >= live then
  local used = (tonumber(state[3]) or 0) + tonumber(ARGV[6])
  if used <= tonumber(ARGV[7]) * (1 + SLACK) then
    local counted = string.format('%d', (tonumber(state[4]) or 0) + tonumber(ARGV[6]))
    if state[5] == ARGV[5] then
      redis.call('HSET', hash, 'c', counted, 't', string.format('%d', used))
    else
      redis.call('HSET', hash, 'c', counted, 't', string.format('%d', used), 'r', ARGV[5])
    end
    return {0, used, (tonumber(state[2]) + 1) * G + W - now}
  end
end
