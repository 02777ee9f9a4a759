-- A limit set (src/local/policy.rs), after head.lua, set_hot.lua (whose `cost`, `n` and
-- HMGET `states` this reuses), window.lua and factor.lua: every limit's window is loaded
-- and decided, then the request is counted in every limit or in none, in one script, so no
-- other call sees a limit between the check and the count.
--
-- window.lua works on one window through head.lua's locals (ids, hash, W, G, live,
-- current_id, current) and its own (newest, oldest, totals, newest_counts, unsaved); this
-- script points them at each limit in turn and keeps each limit's window in `views`.
--
-- KEYS: two per limit, in the set's order (closed-bucket list, hash); all share one hash
-- tag.  ARGV[1] the time ('' = the server's TIME), ARGV[2], ARGV[3] unused here,
-- ARGV[4] mode: 'i' (count) or 'c' (check: record nothing), ARGV[5] cost, ARGV[6] the
-- draw in [0, 1), ARGV[7] the number of limits n, then six values per limit: window in
-- seconds, group in ms, strategy ('a' absolute, 's' suppressed), capacity, hard limit
-- (capacity × hard factor), rate per second.
--
-- Counters as the single-limit scripts keep them: absolute '' (accepted), suppressed 'o'
-- (observed) and 'd' (declined).
--
-- Returns {outcome, retry_after_ms, then per limit: accepted, reset_ms, factor (string),
-- refused (0/1)}; outcome 0 allowed, 1 rejected, 2 shed; retry -1 means never.  (The hot
-- path's shorter reply is in set_hot.lua.)

local draw = tonumber(ARGV[6])
local COUNTERS = {a = {''}, s = {'o', 'd'}}
local FIELDS = {a = {'n', 'l', 't', 'c'}, s = {'n', 'l', 'to', 'td', 'co', 'cd'}}

local limits, views = {}, {}

-- Points window.lua at limit i's keys and grid.
local function select(i)
  local l = limits[i]
  window_s, W, G = l.window_s, l.window_s * 1000, l.group
  current_id = math.floor(now / G)
  current = string.format('%d', current_id)
  live = now - W
  if live < 0 then live = 0 end
  live = math.floor(live / G)
  ids, hash = KEYS[2 * i - 1], KEYS[2 * i]
  local v = views[i]
  if v then
    newest, oldest, totals, newest_counts, unsaved = v[1], v[2], v[3], v[4], v[5]
  end
end

local function save(i)
  views[i] = {newest, oldest, totals, newest_counts, unsaved}
end

-- Each limit's verdict: 'admit', 'draw' (with its factor), 'refuse' or 'hard' (with a wait).
local verdicts, waits, factors = {}, {}, {}
local rejected, hard = false, false
for i = 1, n do
  local b = 7 + (i - 1) * 6
  limits[i] = {
    window_s = tonumber(ARGV[b + 1]), group = tonumber(ARGV[b + 2]), kind = ARGV[b + 3],
    cap = tonumber(ARGV[b + 4]), hard = tonumber(ARGV[b + 5]), rate = tonumber(ARGV[b + 6]),
  }
  local l = limits[i]
  newest, oldest, totals, newest_counts, unsaved = false, false, {}, {}, {}
  select(i)
  load(states[i] or redis.call('HMGET', hash, unpack(FIELDS[l.kind])), COUNTERS[l.kind])
  factors[i] = 0
  if l.kind == 'a' then
    if fits(totals[''] + cost, l.cap) then
      verdicts[i] = 'admit'
    else
      verdicts[i] = 'refuse'
      if fits(cost, l.cap) then
        waits[i] = release(COUNTERS.a, function(left) return fits(left[''] + cost, l.cap) end)
      else
        waits[i] = -1
      end
      rejected = true
    end
  else
    local accepted = totals['o'] - totals['d']
    if not fits(cost, l.cap) then
      verdicts[i], waits[i], factors[i] = 'hard', -1, 1
      hard = true
    elseif reaches(totals['o'], l.hard) then
      verdicts[i], factors[i] = 'hard', 1
      waits[i] = release(COUNTERS.s, function(left) return not reaches(left['o'], l.hard) end)
      hard = true
    elseif fits(accepted + cost, l.cap) then
      verdicts[i] = 'admit'
    else
      verdicts[i], factors[i] = 'draw', formula(l.rate)
    end
  end
  save(i)
end

-- Draws decide only a request no limit refused outright; one draw serves every limit (each
-- admits iff the draw is at least its factor); a check never draws.
local shed = {}
local any_shed = false
for i = 1, n do
  if verdicts[i] == 'hard' then
    shed[i] = true
  elseif verdicts[i] == 'draw' and not rejected and not hard then
    shed[i] = mode ~= 'i' or draw < factors[i]
  else
    shed[i] = false
  end
  any_shed = any_shed or shed[i]
end
local outcome = 0
if rejected then outcome = 1 elseif any_shed then outcome = 2 end

local reply = {outcome, 0}
local retry = 0
for i = 1, n do
  local l = limits[i]
  select(i)
  local counters = COUNTERS[l.kind]
  if mode == 'i' and outcome == 0 then
    if l.kind == 'a' then add(counters, {cost}) else add(counters, {cost, 0}) end
  elseif mode == 'i' and outcome == 2 and shed[i] and fits(cost, l.cap) then
    add(counters, {cost, cost})
  else
    settle()
  end
  local refused = verdicts[i] == 'refuse' or verdicts[i] == 'hard'
    or (verdicts[i] == 'draw' and shed[i] and outcome == 2)
  local wait = 0
  if refused then
    wait = waits[i] or math.min(RECENT_MS, l.window_s * 1000)
    if wait == -1 or retry == -1 then retry = -1 elseif wait > retry then retry = wait end
  end
  local accepted = totals['']
  if l.kind == 's' then accepted = totals['o'] - totals['d'] end
  local reset = 0
  if refused then
    reset = wait
  elseif newest then
    reset = expires_at(tonumber(oldest or newest)) - now
  end
  if reset < 0 or reset > l.window_s * 1000 then reset = l.window_s * 1000 end
  reply[#reply + 1] = accepted
  reply[#reply + 1] = reset
  reply[#reply + 1] = string.format('%.17g', factors[i])
  reply[#reply + 1] = refused and 1 or 0
end
reply[2] = retry
return reply
