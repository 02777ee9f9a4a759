-- The hybrid provider's flush-and-refresh of one limiter key (src/hybrid/committer.rs),
-- after src/redis/lua/head.lua and window.lua, so increments land in the same buckets,
-- totals and TTLs the Redis provider's scripts use.
--
-- KEYS[1..2] as in head.lua (state read with one HMGET and window.lua's `load`).
-- KEYS[3]: the key's lease hash (same hash tag), fields per instance id: 'l:'..id lease
-- (units granted, not yet flushed), 'e:'..id lease expiry (ms), 'q:'..id the last flush
-- sequence number applied (exactly once).
-- ARGV[1..4] as in head.lua; mode 'a' (absolute, counter '') or 's' (suppressed,
-- counters 'o' and 'd', as suppressed.lua).
-- ARGV[5] instance id, ARGV[6] flush sequence number (0: nothing to flush),
-- ARGV[7] lease time to live in ms, ARGV[8] latest rate, ARGV[9] capacity,
-- ARGV[10] units the instance could not fit in its last lease (at least 1),
-- ARGV[11] units still unspent on its lease when it sent this (it may spend them before the
-- reply arrives, so they stay reserved), ARGV[12] the hard limit factor (for the log: the
-- hard-limit test and the factor are computed in Rust from the sums returned),
-- ARGV[13] number of buckets, then per bucket its id and its
-- counts (absolute: units; suppressed: observed, declined).
--
-- Returns {server now ms, 1 if the batch was applied / 0 if it was a repeat or empty,
-- units dropped as already expired, lease (string), accepted total, live lease holders,
-- observed total, observed in the buckets overlapping the last second, the oldest buckets
-- as {id, units, id, units, ...} (absolute, past half the capacity; else empty)}.

local inst = ARGV[5]
local seq = tonumber(ARGV[6])
local lease_ttl = tonumber(ARGV[7])
local rate = tonumber(ARGV[8])
local cap = tonumber(ARGV[9])
local wanted = tonumber(ARGV[10])
local held = tonumber(ARGV[11])
local nbuckets = tonumber(ARGV[13])
local meta = KEYS[3]
-- The counters of the Redis provider's scripts: absolute '' (accepted units); suppressed
-- 'o' (observed) and 'd' (declined), accepted = observed - declined.
local COUNTERS
if mode == 'a' then COUNTERS = {''} else COUNTERS = {'o', 'd'} end
local WIDTH = #COUNTERS

local fields = {'n', 'l'}
for _, c in ipairs(COUNTERS) do fields[#fields + 1] = 't' .. c end
for _, c in ipairs(COUNTERS) do fields[#fields + 1] = 'c' .. c end
fields[#fields + 1] = 'r'
local state = redis.call('HMGET', hash, unpack(fields))
load(state, COUNTERS)
local stored_rate = state[#fields]

local function accepted()
  if mode == 'a' then return totals[''] end
  return totals['o'] - totals['d']
end

-- 1. The batch, exactly once: a sequence number at or below the last one applied is a
-- repeat whose reply was lost.  Ids arrive oldest first.  Like window.lua's add, a bucket
-- behind the open one counts in the open one, which expires later, never earlier.  The
-- writes are batched so that their number does not grow with the buckets in the batch:
-- for new buckets one RPUSH (in chunks of 64) of the open bucket and every new one but the
-- last, which becomes the open one, and one PEXPIRE per key; then one HSET of the open
-- bucket's counts and the totals.  The sequence number is written with the lease.
local applied, expired = 0, 0
local field_q = 'q:' .. inst
if seq > 0 and seq > (tonumber(redis.call('HGET', meta, field_q)) or 0) then
  applied = 1
  local into_newest = nil
  local fresh = {}
  local sums = {}
  for i = 1, WIDTH do sums[i] = 0 end
  local at = 14
  for _ = 1, nbuckets do
    local id = tonumber(ARGV[at])
    local values = {}
    for i = 1, WIDTH do values[i] = tonumber(ARGV[at + i]) end
    at = at + 1 + WIDTH
    if id < live then
      if mode == 'a' then
        expired = expired + values[1]
      else
        expired = expired + values[1] - values[2]
      end
    else
      for i = 1, WIDTH do sums[i] = sums[i] + values[i] end
      local top = fresh[#fresh]
      if top and top[1] >= id then
        for i = 1, WIDTH do top[2][i] = top[2][i] + values[i] end
      elseif #fresh == 0 and newest and tonumber(newest) >= id then
        into_newest = into_newest or {}
        for i = 1, WIDTH do into_newest[i] = (into_newest[i] or 0) + values[i] end
      else
        fresh[#fresh + 1] = {id, values}
      end
    end
  end
  -- What lands in the open bucket is counted before it may close below.
  if into_newest then
    for i, c in ipairs(COUNTERS) do newest_counts[c] = newest_counts[c] + into_newest[i] end
  end
  local set = unsaved
  unsaved = {}
  local ttl
  if #fresh > 0 then
    local closed = {}
    if newest then closed[1] = entry(newest, newest_values(COUNTERS)) end
    for j = 1, #fresh - 1 do
      closed[#closed + 1] = entry(string.format('%d', fresh[j][1]), fresh[j][2])
    end
    for from = 1, #closed, 64 do
      redis.call('RPUSH', ids, unpack(closed, from, math.min(from + 63, #closed)))
    end
    local last = fresh[#fresh]
    if not newest then
      oldest = string.format('%d', fresh[1][1])
      set[#set + 1] = 'l'
      set[#set + 1] = oldest
    end
    newest = string.format('%d', last[1])
    set[#set + 1] = 'n'
    set[#set + 1] = newest
    for i, c in ipairs(COUNTERS) do newest_counts[c] = last[2][i] end
    -- Both keys live until the open bucket stops counting.
    ttl = expires_at(last[1]) - now
    if ttl < 1 then ttl = 1 end
    redis.call('PEXPIRE', ids, ttl)
  end
  if #fresh > 0 or into_newest then
    for _, c in ipairs(COUNTERS) do
      set[#set + 1] = 'c' .. c
      set[#set + 1] = string.format('%d', newest_counts[c])
    end
  end
  for i, c in ipairs(COUNTERS) do
    if sums[i] ~= 0 then
      totals[c] = totals[c] + sums[i]
      set[#set + 1] = 't' .. c
      set[#set + 1] = string.format('%d', totals[c])
    end
  end
  -- One write of the open bucket and the totals, however many buckets the batch held.
  if #set > 0 then redis.call('HSET', hash, unpack(set)) end
  if ttl then redis.call('PEXPIRE', hash, ttl) end
end
settle()

-- The latest rate, as the Redis provider's scripts keep it (a new rate drops a cached
-- factor); only on a key with state, which has a TTL.
if newest and tonumber(stored_rate) ~= rate then
  if mode == 'a' then
    redis.call('HSET', hash, 'r', ARGV[8])
  else
    redis.call('HSET', hash, 'r', ARGV[8], 'sfu', 0)
  end
end

-- 2. Leases: what other live instances may still admit is not ours to grant.
local others, holders = 0, 1
local entries = redis.call('HGETALL', meta)
for i = 1, #entries, 2 do
  local f = entries[i]
  if string.sub(f, 1, 2) == 'e:' then
    local id = string.sub(f, 3)
    if id ~= inst then
      local until_ms = tonumber(entries[i + 1])
      if until_ms > now then
        holders = holders + 1
        others = others + (tonumber(redis.call('HGET', meta, 'l:' .. id)) or 0)
      elseif until_ms + W + G < now then
        -- Gone longer than any of its batches can live: forget it entirely.
        redis.call('HDEL', meta, f, 'l:' .. id, 'q:' .. id)
      end
    end
  end
end

local used = accepted()
local remaining = cap * (1 + SLACK) - used - others
local lease = 0
if remaining > 0 then
  lease = remaining / holders
  -- A share below what the instance needs for one call would strand the last units.
  local floor_share = math.min(remaining, wanted)
  if lease < floor_share then lease = floor_share end
end
if lease < held then lease = held end
-- The lease, and the batch's sequence number when it was applied, in one write.
local lease_fields = {'l:' .. inst, string.format('%.17g', lease), 'e:' .. inst, now + lease_ttl}
if applied == 1 then lease_fields[5], lease_fields[6] = field_q, seq end
redis.call('HSET', meta, unpack(lease_fields))
redis.call('PEXPIRE', meta, W + G + 2 * lease_ttl)

-- 3. What the instance decides on until its next refresh.  Past half its capacity, the
-- key's 32 oldest buckets (id, units): from them a rejection says how long until a call of
-- any count fits.
local oldest_buckets = {}
if mode == 'a' and used * 2 > cap then
  local chunk = redis.call('LRANGE', ids, 0, 31)
  for _, item in ipairs(chunk) do
    local v = parse(item)
    oldest_buckets[#oldest_buckets + 1] = v[1]
    oldest_buckets[#oldest_buckets + 1] = v[2]
  end
  if #chunk < 32 and newest then
    oldest_buckets[#oldest_buckets + 1] = tonumber(newest)
    oldest_buckets[#oldest_buckets + 1] = newest_counts['']
  end
end

-- The suppressed strategy's inputs: observed usage in the window and in the buckets that
-- overlap the last second (the factor itself is computed in Rust, by src/suppressed.rs).
local observed, recent = 0, 0
if mode == 's' then
  observed = totals['o']
  local cutoff = now - 1000
  if cutoff < 0 then cutoff = 0 end
  recent = recent_sum('o', 1, cutoff)
end

return {now, applied, expired, string.format('%.17g', lease), used, holders, observed, recent,
  oldest_buckets}
