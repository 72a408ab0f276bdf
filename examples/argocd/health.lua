-- Argo CD health check for hiredata.io/CarerixConnection.
-- Reads the kstatus conditions the operator writes: Ready, Stalled, observedGeneration.
local hs = { status = "Progressing", message = "Waiting for carerix-operator to report status" }

-- Reasons of Ready=False that retrying does not fix: a person has to act.
local terminal = {
  InvalidClient = true,
  SecretNotFound = true,
  InvalidSecret = true,
  WebhooksNotActivated = true,
  MissingScope = true,
  MissingPermission = true,
  CleanupBlocked = true,
  InvalidSpec = true,
  TenantNotFound = true,
}

local function condition(status, type)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended: spec.suspend is true; the operator does not act on Carerix"
  return hs
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil then
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for carerix-operator to observe generation " .. generation
  return hs
end

local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
-- A condition written for an older generation says nothing about the current spec.
local current = function(c)
  return c.observedGeneration == nil or generation == nil or c.observedGeneration >= generation
end

if stalled ~= nil and stalled.status == "True" and current(stalled) then
  hs.status = "Degraded"
  hs.message = stalled.message or (ready ~= nil and ready.message) or "Stalled"
  return hs
end
if ready ~= nil and current(ready) then
  if ready.status == "True" then
    hs.status = "Healthy"
    hs.message = ready.message or "Ready"
    return hs
  end
  if ready.status == "False" and terminal[ready.reason] then
    hs.status = "Degraded"
    hs.message = ready.message or ready.reason
    return hs
  end
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  end
end
return hs
