-- A refund (after head.lua and window.lua): units an admitted call recorded, given back,
-- for counting by outcome.  The caller names when the call was decided as two offsets
-- before now (the call's start and its reply, on the caller's clock); the units are taken
-- from the live buckets between the two, oldest first, so what is left never expires
-- earlier than it should (src/window/refund.rs does the same in process).
-- ARGV[5] 'a' (absolute: one counter '') or 's' (suppressed: 'o' observed, 'd' declined;
-- an admitted unit is observed and not declined, so only 'o' goes down).
-- ARGV[6] units; ARGV[9] 't': ARGV[7] and ARGV[8] are how many ms before now the earliest
-- and the latest time were; 'b': they are the bucket ids themselves (the hybrid provider,
-- which sent the units under ids of its own).
-- Returns the units not found (0 when all were given back).

local suppressed = ARGV[5] == 's'
local COUNTERS = {''}
if suppressed then COUNTERS = {'o', 'd'} end
local want = tonumber(ARGV[6])
local function bucket_at(ago)
  local t = now - tonumber(ago)
  if t < 0 then t = 0 end
  return math.floor(t / G)
end
local lo, hi
if ARGV[9] == 'b' then
  lo, hi = tonumber(ARGV[7]), tonumber(ARGV[8])
else
  lo, hi = bucket_at(ARGV[7]), bucket_at(ARGV[8])
end

local fields = {'n', 'l'}
for _, c in ipairs(COUNTERS) do fields[#fields + 1] = 't' .. c end
for _, c in ipairs(COUNTERS) do fields[#fields + 1] = 'c' .. c end
if not load(redis.call('HMGET', hash, unpack(fields)), COUNTERS) then return want end

-- The admitted units of a bucket's counts {count} or {observed, declined}; takes up to
-- `want` of them out of `values`, returns how many.
local function take(values)
  local admitted = values[1]
  if suppressed then admitted = values[1] - values[2] end
  local n = math.min(admitted, want)
  if n > 0 then
    values[1] = values[1] - n
    want = want - n
    totals[COUNTERS[1]] = totals[COUNTERS[1]] - n
  end
  return n
end

-- Closed buckets in [lo, hi], newest first from the list's tail in chunks of 32.
local found = {}
local len = redis.call('LLEN', ids)
local stop = len - 1
while stop >= 0 do
  local start = stop - 31
  if start < 0 then start = 0 end
  local chunk = redis.call('LRANGE', ids, start, stop)
  local older = false
  for i = #chunk, 1, -1 do
    local v = parse(chunk[i])
    if v[1] < lo then older = true break end
    if v[1] <= hi then found[#found + 1] = {start + i - 1, v} end
  end
  if older then break end
  stop = start - 1
end
-- Oldest first.
for i = #found, 1, -1 do
  if want == 0 then break end
  local index, v = found[i][1], found[i][2]
  local values = {unpack(v, 2)}
  if take(values) > 0 then redis.call('LSET', ids, index, entry(string.format('%d', v[1]), values)) end
end
-- Then the open bucket.
local n_id = tonumber(newest)
if want > 0 and n_id >= lo and n_id <= hi then
  local values = newest_values(COUNTERS)
  if take(values) > 0 then
    unsaved[#unsaved + 1] = 'c' .. COUNTERS[1]
    unsaved[#unsaved + 1] = string.format('%d', values[1])
  end
end
unsaved[#unsaved + 1] = 't' .. COUNTERS[1]
unsaved[#unsaved + 1] = string.format('%d', totals[COUNTERS[1]])
settle()
return want
