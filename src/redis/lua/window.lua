-- The sliding window of src/window.rs, for one limiter key (after head.lua and the
-- strategy's hot path).
--
-- Bucket id = floor(t / g); bucket b counts while (b + 1) * g + W > t; an increment behind
-- the newest bucket (a clock that stepped back) counts in the newest one.  The open bucket
-- lives in the hash beside the totals, so the hash stays a handful of fields (a listpack
-- whose reads and writes cost the same however many buckets the key has); when a newer
-- bucket opens, the open one is pushed onto the list with its counts, and buckets leave the
-- list from its head as they stop counting: each bucket is pushed once and popped once, and
-- no list is ever unpacked.  Both keys expire when the open bucket stops counting (at most
-- W + g after it opened).

local function fits(used, cap) return used <= cap * (1 + SLACK) end
local function reaches(used, limit) return used >= limit * (1 - SLACK) end
local function expires_at(id) return (id + 1) * G + W end

-- The key's window: `newest` / `oldest` are the bucket ids as stored (strings) or false;
-- `totals[c]` the running total of counter c and `newest_counts[c]` its count in the open
-- bucket.
local newest, oldest
local totals, newest_counts = {}, {}

-- Hash fields this call changed that no write has carried yet (`load`'s new oldest id and
-- totals, a strategy's latest rate): `add` writes them with its own HSET; a script that ends
-- without `add` calls `settle` first.
local unsaved = {}

local function settle()
  if #unsaved > 0 then
    redis.call('HSET', hash, unpack(unsaved))
    unsaved = {}
  end
end

-- A closed bucket as the list holds it: "id:count:count...", one count per counter.
local function entry(id, values)
  local parts = {id}
  for i = 1, #values do parts[i + 1] = string.format('%d', values[i]) end
  return table.concat(parts, ':')
end

-- A list entry's id and counts, as numbers: {id, count, count...}.
local function parse(item)
  local values = {}
  for v in string.gmatch(item, '[^:]+') do values[#values + 1] = tonumber(v) end
  return values
end

-- The open bucket's counts, in counter order.
local function newest_values(counters)
  local values = {}
  for i, c in ipairs(counters) do values[i] = newest_counts[c] end
  return values
end

-- Takes the values of one HMGET of 'n', 'l', then 't' .. c for each counter, then 'c' .. c
-- for each counter, and drops the buckets that no longer count.  If even the open bucket is
-- dead the state is dropped whole, as the keys' TTL would have done.  Returns false when
-- the key has no state.
local function load(values, counters)
  newest, oldest = values[1], values[2]
  local k = #counters
  for i, c in ipairs(counters) do
    totals[c] = tonumber(values[2 + i]) or 0
    newest_counts[c] = tonumber(values[2 + k + i]) or 0
  end
  if not newest then return false end
  if tonumber(newest) < live then
    redis.call('DEL', ids, hash)
    newest, oldest = false, false
    for _, c in ipairs(counters) do
      totals[c] = 0
      newest_counts[c] = 0
    end
    return false
  end
  if oldest and tonumber(oldest) >= live then return true end
  local dropped = {}
  for _, c in ipairs(counters) do dropped[c] = 0 end
  local found = false
  while not found do
    local chunk = redis.call('LRANGE', ids, 0, 31)
    local gone = 0
    for i, item in ipairs(chunk) do
      local v = parse(item)
      if v[1] >= live then
        oldest = string.format('%d', v[1])
        found = true
        break
      end
      gone = i
      for j, c in ipairs(counters) do dropped[c] = dropped[c] + v[j + 1] end
    end
    if gone > 0 then redis.call('LTRIM', ids, gone, -1) end
    if gone < 32 then break end
  end
  -- Every closed bucket is gone: the open one is the oldest.
  if not found then oldest = newest end
  -- The new oldest id and the totals ride on the call's next write of the hash.
  unsaved = {'l', oldest}
  for _, c in ipairs(counters) do
    if dropped[c] ~= 0 then
      totals[c] = totals[c] - dropped[c]
      unsaved[#unsaved + 1] = 't' .. c
      unsaved[#unsaved + 1] = string.format('%d', totals[c])
    end
  end
  return true
end

-- Records values[i] under counters[i] in the bucket of now (behind the open bucket: in the
-- open one, which expires later, never earlier), with one HSET of the counts and totals
-- (the script is atomic, so that is an increment).  A new bucket closes the open one onto
-- the list and sets both keys' TTL to the moment the new one stops counting.
local function add(counters, values)
  local fields = unsaved
  unsaved = {}
  if newest and tonumber(newest) >= current_id then
    for i, c in ipairs(counters) do
      local v = values[i]
      if v ~= 0 then
        newest_counts[c] = newest_counts[c] + v
        totals[c] = totals[c] + v
        fields[#fields + 1] = 'c' .. c
        fields[#fields + 1] = string.format('%d', newest_counts[c])
        fields[#fields + 1] = 't' .. c
        fields[#fields + 1] = string.format('%d', totals[c])
      end
    end
    if #fields > 0 then redis.call('HSET', hash, unpack(fields)) end
    return
  end
  if newest then
    redis.call('RPUSH', ids, entry(newest, newest_values(counters)))
  else
    fields[#fields + 1] = 'l'
    fields[#fields + 1] = current
    oldest = current
  end
  fields[#fields + 1] = 'n'
  fields[#fields + 1] = current
  for i, c in ipairs(counters) do
    local v = values[i]
    newest_counts[c] = v
    totals[c] = totals[c] + v
    fields[#fields + 1] = 'c' .. c
    fields[#fields + 1] = string.format('%d', v)
    fields[#fields + 1] = 't' .. c
    fields[#fields + 1] = string.format('%d', totals[c])
  end
  redis.call('HSET', hash, unpack(fields))
  newest = current
  local ttl = expires_at(current_id) - now
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', ids, ttl)
  redis.call('PEXPIRE', hash, ttl)
end

-- The sum of counter `c` (the `index`-th of the key's counters) over the buckets that
-- overlap (cutoff, now], newest first, as `Window::recent` in src/window.rs: the open
-- bucket, then the list's tail in chunks of 32, never an unbounded unpack.
local function recent_sum(c, index, cutoff)
  if not newest or (tonumber(newest) + 1) * G <= cutoff then return 0 end
  local sum = newest_counts[c]
  local from = -1
  while true do
    local chunk = redis.call('LRANGE', ids, from - 31, from)
    if #chunk == 0 then return sum end
    for i = #chunk, 1, -1 do
      local v = parse(chunk[i])
      if (v[1] + 1) * G <= cutoff then return sum end
      sum = sum + v[index + 1]
    end
    if #chunk < 32 then return sum end
    from = from - 32
  end
end

-- Walks the buckets oldest first (the closed ones, then the open one), as if each expired
-- in turn, until done(left) holds for the counts left (`left[c]` per counter): returns the
-- wait until that bucket expires and what is left then, or -1 when even an empty window
-- does not satisfy done.  Reads the list in chunks of 32, never unpacking it whole.
local function release(counters, done)
  local left = {}
  for _, c in ipairs(counters) do left[c] = totals[c] end
  local function drop(id, values)
    for j, c in ipairs(counters) do left[c] = left[c] - values[j] end
    if done(left) then
      local wait = expires_at(id) - now
      if wait < 0 then wait = 0 end
      return wait
    end
  end
  local from = 0
  while true do
    local chunk = redis.call('LRANGE', ids, from, from + 31)
    for _, item in ipairs(chunk) do
      local v = parse(item)
      local wait = drop(v[1], {unpack(v, 2)})
      if wait then return wait, left end
    end
    if #chunk < 32 then break end
    from = from + 32
  end
  if newest then
    local wait = drop(tonumber(newest), newest_values(counters))
    if wait then return wait, left end
  end
  return -1, left
end
