{{/* Names, labels and shared snippets of the edgeserve chart. */}}

{{- define "edgeserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-scoped prefix of every object name (63 characters at most, DNS-safe). */}}
{{- define "edgeserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "edgeserve.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "edgeserve.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>", e.g. include "edgeserve.componentName" (list . "gateway"). */}}
{{- define "edgeserve.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "edgeserve.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "edgeserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels a Service or a ServiceMonitor selects on: stable across upgrades. */}}
{{- define "edgeserve.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "edgeserve.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "edgeserve.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "edgeserve.chart" $root }}
{{ include "edgeserve.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: edgeserve
{{- end }}

{{- define "edgeserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "edgeserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag" of a component image; the tag defaults to the chart's appVersion. */}}
{{- define "edgeserve.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{/* The container securityContext every edgeserve container runs with. */}}
{{- define "edgeserve.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The pod securityContext: a fixed non-root uid/gid that owns the writable volumes. */}}
{{- define "edgeserve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Where the sync service reaches the broker: the chart's Mosquitto, else sync.broker.host. */}}
{{- define "edgeserve.brokerHost" -}}
{{- if .Values.sync.broker.host }}
{{- .Values.sync.broker.host }}
{{- else if .Values.mosquitto.enabled }}
{{- include "edgeserve.componentName" (list . "mosquitto") }}
{{- else }}
{{- fail "sync.broker.host is required when mosquitto.enabled is false" }}
{{- end }}
{{- end }}

{{/* The gateway image: the GPU build ("<tag>-gpu" unless gateway.gpu.imageTag) with GPUs. */}}
{{- define "edgeserve.gatewayImage" -}}
{{- $gw := .Values.gateway }}
{{- $tag := default .Chart.AppVersion $gw.image.tag }}
{{- if $gw.gpu.enabled }}
{{- $tag = default (printf "%s-gpu" $tag) $gw.gpu.imageTag }}
{{- end }}
{{- printf "%s:%s" $gw.image.repository $tag }}
{{- end }}
