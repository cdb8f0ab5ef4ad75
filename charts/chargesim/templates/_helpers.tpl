{{/* Chart name, overridable. */}}
{{- define "chargesim.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release> when it already contains the chart name, else <release>-<chart>. */}}
{{- define "chargesim.fullname" -}}
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

{{- define "chargesim.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "chargesim.labels" -}}
helm.sh/chart: {{ include "chargesim.chart" . }}
app.kubernetes.io/name: {{ include "chargesim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chargesim
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector of the operator pods; never changes across upgrades (Deployment selectors are immutable). */}}
{{- define "chargesim.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chargesim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "chargesim.mongodb.fullname" -}}
{{- printf "%s-mongodb" (include "chargesim.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chargesim.mongodb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chargesim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: mongodb
{{- end }}

{{/* Secret holding username, password and uri of the in-cluster MongoDB. */}}
{{- define "chargesim.mongodb.secretName" -}}
{{- default (include "chargesim.mongodb.fullname" .) .Values.mongodb.auth.existingSecret }}
{{- end }}

{{- define "chargesim.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chargesim.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest. */}}
{{- define "chargesim.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "chargesim.defaultImage" -}}
{{- default (include "chargesim.image" .) .Values.operator.defaultImage }}
{{- end }}

{{/* Namespace of the dashboard ConfigMaps. */}}
{{- define "chargesim.dashboards.namespace" -}}
{{- default .Release.Namespace .Values.dashboards.namespace }}
{{- end }}

{{/* The operator's metrics Service. */}}
{{- define "chargesim.metricsServiceName" -}}
{{- printf "%s-operator-metrics" (include "chargesim.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret with the certificate of the operator's /metrics; empty when the operator uses its
own self-signed one (or serves plain HTTP). */}}
{{- define "chargesim.metricsTLSSecret" -}}
{{- if .Values.metrics.secure }}
{{- if .Values.metrics.tls.existingSecret }}
{{- .Values.metrics.tls.existingSecret }}
{{- else if .Values.metrics.tls.generate }}
{{- printf "%s-metrics-tls" (include "chargesim.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Port the operator serves /metrics on: 8443 (HTTPS) or 8080 (plain HTTP). */}}
{{- define "chargesim.metricsPort" -}}
{{- if .Values.metrics.secure }}8443{{ else }}8080{{ end }}
{{- end }}
