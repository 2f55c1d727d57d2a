-- Argo CD health of a celery.taskrun.dev/CronTaskRun, from its status.
--   Progressing  the operator has not written a status for the current spec yet
--                (status.observedGeneration, 0 by the schema's default, below
--                metadata.generation), or has written no Ready condition
--   Degraded     the schedule cannot run (Ready False: a schedule or time zone the
--                operator cannot read, a template its policies refuse); the message
--                is the condition's
--   Suspended    spec.suspend: no slot makes a run
--   Healthy      the schedule runs (Ready True)
-- A run's own outcome is its TaskRun's health, not the schedule's.
-- Install: resource.customizations.health.celery.taskrun.dev_CronTaskRun in argocd-cm
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

local function describe(c, fallback)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status or {}
local generation = obj.metadata.generation or 1
local observed = status.observedGeneration or 0
if observed < generation then
  health.status = "Progressing"
  health.message = "Waiting for the operator to read the CronTaskRun's spec"
  return health
end

local ready = condition(status.conditions, "Ready")
if ready ~= nil and ready.status == "False" then
  health.status = "Degraded"
  health.message = describe(ready, "The schedule cannot run")
  return health
end
if obj.spec ~= nil and obj.spec.suspend == true then
  health.status = "Suspended"
  health.message = "Suspended: no slot makes a run"
  return health
end
if ready ~= nil and ready.status == "True" then
  health.status = "Healthy"
  if status.nextScheduleTime ~= nil then
    health.message = "Next run at " .. status.nextScheduleTime
  else
    health.message = describe(ready, "Scheduled")
  end
  return health
end

health.status = "Progressing"
health.message = "Waiting for the operator to accept the CronTaskRun"
return health
