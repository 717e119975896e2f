-- Included where a script says `--!include base36` (store._lua): an
-- attribute's time as stored, its ms in base 36 (layout.stored_attribute).
local DIGITS36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local function base36(n)
  if n < 0 then return '-' .. base36(-n) end
  local digits = ''
  repeat
    local digit = n % 36
    digits = string.sub(DIGITS36, digit + 1, digit + 1) .. digits
    n = (n - digit) / 36
  until n == 0
  return digits
end
local function from_base36(s)
  if string.sub(s, 1, 1) == '-' then return -tonumber(string.sub(s, 2), 36) end
  return tonumber(s, 36)
end
