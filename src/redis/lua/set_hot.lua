-- A limit set's fast path (after head.lua): a counted request that every limit admits
-- with room to spare, each limit counting in its open bucket, or opening the bucket of now
-- (the common case of a fine group: nearly every call opens a bucket and the oldest
-- expires), or starting a key with no state.  No closure, one TIME (head.lua).
--
-- First the reads, one HMGET per limit, and the decision: a limit admits here when the
-- call fits even with the buckets that expire now still counted (a bound: they only lower
-- the totals), so the decision needs nothing but the hash.  Anything else (a call that
-- needs the exact totals, a draw, a clock behind the open bucket, a key idle past its
-- window) falls through to set.lua having written nothing; the HMGET states read here are
-- kept in `states` for it.
--
-- Then the writes, the same state that set.lua's `load` and `add` (window.lua) would leave,
-- per limit: one HSET; for a new bucket the RPUSH of the closed one, and one LPOP per
-- bucket that expired (each entry this script pushes carries, after its counts, the id of
-- the bucket opened after it, which window.lua's readers ignore: so a pop tells whether
-- the next bucket also expired without reading it; an entry without it costs an LINDEX).
--
-- TTLs: a new bucket must extend both keys' TTL to when it stops counting, and no further
-- (the spec: nothing outlives its window, even if every process dies).  The deadline is
-- recorded in the hash, 'x' = "<open bucket id>:<deadline ms>", so a call that finds the
-- recorded deadline still covering its bucket (SLACK_GROUPS > 0 would set TTLs that many
-- groups further, saving PEXPIREs at the cost of keys outliving their window; it is 0)
-- needs no PEXPIRE.  The record holds only while the open bucket is the one it names: every
-- other writer that moves a TTL (window.lua's `add`, the hybrid's flush) opens a bucket,
-- which makes it stale, and then this script sets both TTLs again.
--
-- ARGV as set.lua reads them: ARGV[5] cost, ARGV[7] n, then six values per limit.
-- Returns {0, then per limit: accepted, reset_ms} (allowed, no limit shedding).

local cost = tonumber(ARGV[5])
local n = tonumber(ARGV[7])
local states = {}
if mode == 'i' then
  local SLACK_GROUPS = 0
  -- Per limit: {kind, totals[1], totals[2], oldest id, window ms, group ms, bucket of now};
  -- kind 'h' (count in the open bucket), 'b' (open a bucket), 'f' (the key's first bucket).
  local plan = {}
  local fast = true
  for i = 1, n do
    local b = 7 + (i - 1) * 6
    local w = tonumber(ARGV[b + 1]) * 1000
    local g = tonumber(ARGV[b + 2])
    local absolute = ARGV[b + 3] == 'a'
    local lv = now - w
    if lv < 0 then lv = 0 end
    lv = math.floor(lv / g)
    local cur = math.floor(now / g)
    local s
    if absolute then
      s = redis.call('HMGET', KEYS[2 * i], 'n', 'l', 't', 'c', 'x')
    else
      s = redis.call('HMGET', KEYS[2 * i], 'n', 'l', 'to', 'td', 'co', 'cd', 'x')
    end
    states[i] = s
    local newest, oldest = tonumber(s[1]), tonumber(s[2])
    local t1, t2 = tonumber(s[3]) or 0, 0
    if not absolute then t2 = tonumber(s[4]) or 0 end
    local kind
    if not newest then
      kind, oldest = 'f', cur
    elseif oldest and newest == cur and oldest >= lv then
      kind = 'h'
    elseif oldest and newest < cur and newest >= lv then
      kind = 'b'
    else
      fast = false
      break
    end
    if absolute then
      fast = t1 + cost <= tonumber(ARGV[b + 4]) * (1 + SLACK)
    else
      fast = t1 < tonumber(ARGV[b + 5]) * (1 - SLACK)
        and t1 - t2 + cost <= tonumber(ARGV[b + 4]) * (1 + SLACK)
    end
    if not fast then break end
    plan[i] = {kind, t1, t2, oldest, w, g, cur, lv}
  end
  if fast then
    local reply = {0}
    for i = 1, n do
      local p = plan[i]
      local s = states[i]
      local ids, hash = KEYS[2 * i - 1], KEYS[2 * i]
      local absolute = ARGV[7 + (i - 1) * 6 + 3] == 'a'
      local kind, t1, t2, oldest, w, g, cur, lv = p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]
      if kind == 'h' then
        t1 = t1 + cost
        if absolute then
          redis.call('HSET', hash, 'c', string.format('%d', (tonumber(s[4]) or 0) + cost),
            't', string.format('%d', t1))
        else
          redis.call('HSET', hash, 'co', string.format('%d', (tonumber(s[5]) or 0) + cost),
            'to', string.format('%d', t1))
        end
      else
        local id = string.format('%d', cur)
        local created = true
        if kind == 'b' then
          -- Close the open bucket first, so the list never empties (and loses its TTL).
          local closed
          if absolute then
            closed = s[1] .. ':' .. string.format('%d', tonumber(s[4]) or 0) .. ':' .. id
          else
            closed = s[1] .. ':' .. string.format('%d', tonumber(s[5]) or 0) .. ':'
              .. string.format('%d', tonumber(s[6]) or 0) .. ':' .. id
          end
          created = redis.call('RPUSH', ids, closed) == 1
          -- The buckets that stopped counting leave the list and the totals, oldest first.
          while oldest < lv do
            local item = redis.call('LPOP', ids)
            local at, x, y, after
            if absolute then
              at, x, after = string.match(item, '^(%d+):(%-?%d+):?(%d*)$')
            else
              at, x, y, after = string.match(item, '^(%d+):(%-?%d+):(%-?%d+):?(%d*)$')
            end
            at = tonumber(at)
            if at >= lv then
              -- Not expired after all ('l' was behind the list's head): back it goes.
              redis.call('LPUSH', ids, item)
              oldest = at
            else
              t1 = t1 - tonumber(x)
              if not absolute then t2 = t2 - tonumber(y) end
              oldest = tonumber(after)
              if not oldest then
                oldest = tonumber(string.match(redis.call('LINDEX', ids, 0), '^(%d+)'))
              end
            end
          end
        end
        t1 = t1 + cost
        local counted = string.format('%d', cost)
        -- The TTL both keys need now, and whether the recorded deadline still covers it.
        local needed = (cur + 1) * g + w
        local deadline = false
        local xn, xd = string.match(s[#s] or '', '^(%d+):(%d+)$')
        if kind == 'b' and xn == s[1] and tonumber(xd) >= needed then deadline = xd end
        local record = deadline
        local ttl = false
        if not deadline then
          local slack = SLACK_GROUPS * g
          if slack > w / 4 then slack = math.floor(w / 4) end
          record = string.format('%d', needed + slack)
          ttl = needed + slack - now
          if ttl < 1 then ttl = 1 end
        end
        record = id .. ':' .. record
        if absolute then
          redis.call('HSET', hash, 'l', string.format('%d', oldest), 'n', id, 'c', counted,
            't', string.format('%d', t1), 'x', record)
        else
          redis.call('HSET', hash, 'l', string.format('%d', oldest), 'n', id, 'co', counted,
            'to', string.format('%d', t1), 'cd', '0', 'td', string.format('%d', t2),
            'x', record)
        end
        -- After the HSET: a key's first HSET creates the hash, which a PEXPIRE before it
        -- would have missed.
        if ttl then
          redis.call('PEXPIRE', hash, ttl)
          if kind == 'b' then redis.call('PEXPIRE', ids, ttl) end
        elseif created then
          redis.call('PEXPIRE', ids, tonumber(deadline) - now)
        end
      end
      local reset = (oldest + 1) * g + w - now
      if reset < 0 or reset > w then reset = w end
      if absolute then reply[2 * i] = t1 else reply[2 * i] = t1 - t2 end
      reply[2 * i + 1] = reset
    end
    return reply
  end
end
