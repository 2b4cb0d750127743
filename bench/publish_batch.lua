-- wrk script: POST batches of 10 small events to /publish/batch (the intake with batching; compare
-- with publish.lua's one event per request: events/s = requests/s x 10).
wrk.method = "POST"
local events = {}
for i = 1, 10 do
  events[i] = '{"channel": "intake", "data": "intake test event"}'
end
wrk.body = "[" .. table.concat(events, ", ") .. "]"
wrk.headers["Content-Type"] = "application/json"
