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

{{/* The Secret holding CELERY_BROKER_URL and CELERY_RESULT_BACKEND. */}}
{{- define "celery-taskrun.connectionSecret" -}}
{{- default (printf "%s-connection" (include "celery-taskrun.fullname" .)) .Values.celery.existingSecret }}
{{- end }}

{{/*
Refuse values that would split one setting between two places, or that RBAC cannot
follow.  Included by the ConfigMap, which every install renders.
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
{{- if and (not .Values.celery.existingSecret) (not .Values.celery.brokerUrl) }}
{{- fail "celery.brokerUrl (or celery.existingSecret) is required" }}
{{- end }}
{{- if hasPrefix "rpc:" (default "" .Values.celery.resultBackend) }}
{{- fail "celery.resultBackend: rpc:// cannot work with an operator (results go back to the process that sent the task); use redis:// or db+...://" }}
{{- end }}
{{- end }}
