{{/* The name of every object of a release: the release name, or
release-iotposture when the release name does not say iotposture. */}}
{{- define "iotposture.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "iotposture.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "iotposture.labels" -}}
{{ include "iotposture.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: iotposture
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "iotposture.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The Secret holding the webhook certificate every replica serves. */}}
{{- define "iotposture.recordSecret" -}}
{{ include "iotposture.fullname" . }}-decision-record
{{- end -}}

{{- define "iotposture.webhookSecret" -}}
{{ include "iotposture.fullname" . }}-webhook-tls
{{- end -}}

{{/* The node agent's pods: labels of their own, so that the operator's
Deployment, Service and PodDisruptionBudget never select them. */}}
{{- define "iotposture.nodeAgentSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-node-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "iotposture.nodeAgentLabels" -}}
{{ include "iotposture.nodeAgentSelectorLabels" . }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: iotposture
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
