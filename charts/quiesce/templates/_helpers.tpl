{{/*
Names, labels and images shared by the templates.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "quiesce.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 46 | trimSuffix "-" -}}
{{- end -}}

{{/*
RELEASE-CHART, or just RELEASE when it already contains the chart name, or
fullnameOverride. At most 46 characters, so that FULLNAME-operator-metrics
(the Service) stays a valid 63-character DNS label.
*/}}
{{- define "quiesce.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's objects: quiesce-operator for a release named quiesce. */}}
{{- define "quiesce.operatorName" -}}
{{- printf "%s-operator" (include "quiesce.fullname" .) -}}
{{- end -}}

{{/* name-version, for the helm.sh/chart label. */}}
{{- define "quiesce.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is
immutable). Never app.kubernetes.io/managed-by=quiesce-operator: the
operator watches the Deployments and Services carrying that label as its own.
*/}}
{{- define "quiesce.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quiesce.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The recommended labels, on every object. */}}
{{- define "quiesce.labels" -}}
helm.sh/chart: {{ include "quiesce.chart" . }}
{{ include "quiesce.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: quiesce
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "quiesce.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "quiesce.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name an existing ServiceAccount" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "quiesce.leaseName" -}}
{{- default (include "quiesce.operatorName" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* REPOSITORY@DIGEST when a digest is set, else REPOSITORY:TAG (tag defaults to appVersion). Call with (list IMAGE-VALUES $). */}}
{{- define "quiesce.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Values that the schema cannot check on its own: fail with what to change. */}}
{{- define "quiesce.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicas is %d but leaderElection.enabled is false: several operators would reconcile the same resources at once. Set leaderElection.enabled=true or replicas=1." (int .Values.replicas)) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor selects the metrics Service. Set metrics.service.enabled=true." -}}
{{- end -}}
{{- end -}}
