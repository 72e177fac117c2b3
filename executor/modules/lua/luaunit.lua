-- dscbatch's stand-in for luaunit (which Debian bookworm does not package): the part MultiPL-E's HumanEval Lua
-- tests use. lu.assertEquals(actual, expected) compares tables deeply (same keys, equal values) and anything
-- else with ==, as luaunit does; lu.LuaUnit.run() runs every global function whose name starts with "test"
-- (in name order), prints each failure with its message and returns how many failed (os.exit's status).
local M = {LuaUnit = {}}

local function equal(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then
    return a == b
  end
  for key, value in pairs(a) do
    if not equal(value, b[key]) then
      return false
    end
  end
  for key in pairs(b) do
    if a[key] == nil then
      return false
    end
  end
  return true
end

local function show(value)
  if type(value) == "string" then
    return string.format("%q", value)
  end
  if type(value) ~= "table" then
    return tostring(value)
  end
  local keys = {}
  for key in pairs(value) do
    keys[#keys + 1] = key
  end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  local parts = {}
  for _, key in ipairs(keys) do
    parts[#parts + 1] = (math.type(key) == "integer" and "" or show(key) .. "=") .. show(value[key])
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function M.assertEquals(actual, expected)
  if not equal(actual, expected) then
    error("expected: " .. show(expected) .. ", actual: " .. show(actual), 2)
  end
end

function M.LuaUnit.run()
  local names = {}
  for name, value in pairs(_G) do
    if type(name) == "string" and name:sub(1, 4):lower() == "test" and type(value) == "function" then
      names[#names + 1] = name
    end
  end
  table.sort(names)
  local failed = 0
  for _, name in ipairs(names) do
    local ok, message = xpcall(_G[name], debug.traceback)
    if not ok then
      failed = failed + 1
      print(name .. " FAILED: " .. tostring(message))
    end
  end
  print(string.format("Ran %d tests, %d failed", #names, failed))
  return failed
end

return M
