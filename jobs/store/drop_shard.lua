-- Delete a shard's marker once every position of the shard has a result; else return the positions without
-- one and change nothing. A marker already gone (another copy finished the shard) has nothing missing.
-- KEYS: shard marker, attempts. ARGV: shard key, the shard's number of positions.
local missing = {}
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return missing
end
local count = tonumber(ARGV[2])
if redis.call('BITCOUNT', KEYS[1]) < count then
  for i = 0, count - 1 do
    if redis.call('GETBIT', KEYS[1], i) == 0 then missing[#missing + 1] = i end
  end
  if #missing > 0 then return missing end
end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return missing
