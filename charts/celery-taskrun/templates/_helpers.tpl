{{/* The chart's name, or nameOverride. */}}
{{- define "celery-taskrun.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the prefix of every object's name. */}}
{{- define "celery-taskrun.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "celery-taskrun.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "celery-taskrun.labels" -}}
helm.sh/chart: {{ include "celery-taskrun.chart" . }}
{{ include "celery-taskrun.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: celery-taskrun
{{- end }}

{{- define "celery-taskrun.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celery-taskrun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "celery-taskrun.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "celery-taskrun.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "celery-taskrun.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the broker and backend URLs. */}}
{{- define "celery-taskrun.connectionSecret" -}}
{{- default (printf "%s-connection" (include "celery-taskrun.fullname" .)) .Values.celery.existingSecret }}
{{- end }}

{{/*
CELERY_BROKER_URL and CELERY_RESULT_BACKEND from that Secret's keys: named one by one
(not envFrom), so no other key of a shared Secret reaches the process's environment.
*/}}
{{- define "celery-taskrun.connectionEnv" -}}
{{- range $name, $key := dict "CELERY_BROKER_URL" .Values.celery.brokerUrlKey "CELERY_RESULT_BACKEND" .Values.celery.resultBackendKey }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "celery-taskrun.connectionSecret" $ }}
      key: {{ $key | quote }}
{{- end }}
{{- end }}

{{/*
Refuse values that would split one setting between two places, keep URLs in plain text
unasked, or that RBAC cannot follow.  Included by the ConfigMap, which every install renders.
*/}}
{{- define "celery-taskrun.validate" -}}
{{- range $key, $where := dict "brokerUrl" "celery.brokerUrl" "resultBackend" "celery.resultBackend" "metricsHost" "metrics (the pod listens on 0.0.0.0)" "metricsPort" "metrics.port" "namespaces" "watchNamespaces" }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart: use %s" $key $where) }}
{{- end }}
{{- end }}
{{- range .Values.watchNamespaces }}
{{- if regexMatch "[*?\\[]" . }}
{{- fail (printf "watchNamespaces: %q is a glob; the chart grants a Role per namespace and needs exact names" .) }}
{{- end }}
{{- end }}
{{- with .Values.celery }}
{{- if eq .brokerUrlKey .resultBackendKey }}
{{- fail "celery.brokerUrlKey and celery.resultBackendKey name the same key: the broker and the backend need one each" }}
{{- end }}
{{- if .createSecret }}
{{- if .existingSecret }}
{{- fail "celery.createSecret makes a Secret from celery.brokerUrl and celery.resultBackend: leave celery.existingSecret empty, or drop createSecret and the URLs" }}
{{- end }}
{{- if not (and .brokerUrl .resultBackend) }}
{{- fail "celery.createSecret needs both celery.brokerUrl and celery.resultBackend" }}
{{- end }}
{{- else if or .brokerUrl .resultBackend }}
{{- fail "celery.brokerUrl and celery.resultBackend are read only with celery.createSecret=true (development: the URLs would be kept in plain text); otherwise create a Secret with the URLs and name it in celery.existingSecret (the chart's README, \"Connection\")" }}
{{- end }}
{{- end }}
{{- if hasPrefix "rpc:" (default "" .Values.celery.resultBackend) }}
{{- fail "celery.resultBackend: rpc:// cannot work with an operator (results go back to the process that sent the task); use redis:// or db+...://" }}
{{- end }}
{{- end }}
