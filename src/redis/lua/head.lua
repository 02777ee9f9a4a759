-- The start of every script: arguments, the time, the bucket of now. No function is
-- defined here, so a call on the hot path (each strategy's `*_hot.lua`, next) creates no
-- closure: the helpers of window.lua come after it, for the calls that need them.
--
-- KEYS[1]: list of the key's closed buckets, oldest first, each "id:count" (one count per
-- counter, ':'-separated; set_hot.lua adds the id of the bucket after it, which the
-- readers here ignore).  KEYS[2]: a small hash: the open (newest) bucket's id 'n' and
-- its counts 'c' .. counter, the running totals 't' .. counter over every live bucket, the
-- oldest live bucket's id 'l' (the list's head, or 'n' when the list is empty) and the key's
-- latest rate 'r' (and the strategies' own fields).
-- ARGV[1]: "" to read the server's TIME, or a test clock's milliseconds (tests only).
-- ARGV[2]: window in whole seconds.  ARGV[3]: group in ms.  ARGV[4]: mode.

local ids, hash = KEYS[1], KEYS[2]
local window_s = tonumber(ARGV[2])
local W = window_s * 1000
local G = tonumber(ARGV[3])
local mode = ARGV[4]

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end

-- config::capacity: relative slack that absorbs f64 rounding.
local SLACK = 1e-9
-- config::capacity::MAX_OBSERVED (2^53): observed units past it are never recorded.
local MAX_OBSERVED = 9007199254740992

-- The bucket of now, and the oldest bucket that still counts now: bucket b counts while
-- (b + 1) * G + W > now.
local current_id = math.floor(now / G)
local current = string.format('%d', current_id)
local live = now - W
if live < 0 then live = 0 end
live = math.floor(live / G)
