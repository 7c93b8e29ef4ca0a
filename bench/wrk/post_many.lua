-- wrk: POST 100 bytes to one of 100 streams <path>0 .. <path>99, picked per request.
local base
local body = string.rep("x", 100)
function init(args) base = wrk.path end
function request()
  local path = base .. math.random(0, 99)
  return wrk.format("POST", path, {["Content-Type"] = "application/octet-stream"}, body)
end
