-- wrk script for bench/publish.sh: 4 KiB events round-robin over 1,000 channels (a flood that
-- the history's byte bound must contain).
local body = string.rep("x", 4096)
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", wrk.path .. "?channel=f" .. (n % 1000), {["Content-Type"] = "text/plain"}, body)
end
