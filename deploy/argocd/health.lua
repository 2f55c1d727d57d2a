-- Argo CD health of a celery.taskrun.dev/TaskRun, from its kstatus conditions.
--   Healthy      the run succeeded (Ready True)
--   Degraded     the run ended in failure: Failed, TimedOut, Revoked (Stalled True);
--                the message is status.message
--   Progressing  in flight (Reconciling True), not yet seen by the operator (no
--                status, or the schema's default `status: {observedGeneration: 0}`),
--                or a status this script does not know
-- Install: resource.customizations.health.celery.taskrun.dev_TaskRun in argocd-cm
-- (see README.md beside this file).
local health = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(status, fallback)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  if status.reason ~= nil and status.reason ~= "" then
    return status.reason
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  health.status = "Progressing"
  health.message = "Waiting for the operator to accept the TaskRun"
  return health
end

-- No observedGeneration check: a finished run's outcome never changes, and the only
-- mutable field (spec.cancel) cannot turn a success into anything else.
local stalled = condition(status.conditions, "Stalled")
local ready = condition(status.conditions, "Ready")
local reconciling = condition(status.conditions, "Reconciling")

if stalled ~= nil and stalled.status == "True" then
  health.status = "Degraded"
  health.message = describe(status, stalled.reason or "The run failed")
  return health
end
if ready ~= nil and ready.status == "True" then
  health.status = "Healthy"
  health.message = describe(status, "The run succeeded")
  return health
end

health.status = "Progressing"
local phase = status.phase or "Pending"
local message = phase
if reconciling ~= nil and reconciling.reason ~= nil and reconciling.reason ~= "" then
  message = phase .. " (" .. reconciling.reason .. ")"
end
if status.progress ~= nil and status.progress.percent ~= nil then
  message = message .. string.format(", %.0f%%", status.progress.percent)
end
if status.message ~= nil and status.message ~= "" then
  message = message .. ": " .. status.message
end
health.message = message
return health
