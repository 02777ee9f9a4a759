-- The suppression factor of src/suppressed.rs (`factor_of`), for the window window.lua
-- points at (counter 'o', observed): after window.lua, before the strategy scripts that
-- shed (suppressed.lua, set.lua).

local RECENT_MS = 1000

-- The factor at `rate`, as suppressed::factor_of: the perceived rate is the larger of the
-- window's and the last second's observed units per second, each over the time its bucket
-- positions cover (at least a second).
local function formula(at_rate)
  local function per_second(observed, first_bucket)
    local covered = now - first_bucket * G
    if covered < RECENT_MS then covered = RECENT_MS end
    return observed * 1000 / covered
  end
  -- Observed usage in the buckets that overlap the last second, newest first.
  local cutoff = now - RECENT_MS
  if cutoff < 0 then cutoff = 0 end
  local recent = recent_sum('o', 1, cutoff)
  local average = per_second(totals['o'], live)
  local last_second = per_second(recent, math.floor(math.max(now - RECENT_MS, 0) / G))
  local perceived = math.max(average, last_second)
  if perceived <= 0 then return 0 end
  local sf = 1 - at_rate / perceived
  if sf < 0 then sf = 0 elseif sf > 1 then sf = 1 end
  return sf
end
