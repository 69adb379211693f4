{{/* Names and labels shared by every template. */}}

{{- define "dynamo.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<suffix>; a release named "dynamo" gives dynamo-nats, dynamo-etcd, dynamo-operator. */}}
{{- define "dynamo.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "dynamo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "dynamo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dynamo
{{- end -}}

{{/* Selector labels of one component: stable across upgrades. */}}
{{- define "dynamo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dynamo.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dynamo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "dynamo.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dynamo.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The NATS URL graphs get by default: the chart's NATS, else the external one. */}}
{{- define "dynamo.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s-nats.%s.svc:4222" (include "dynamo.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "nats.externalUrl is required when nats.enabled is false" .Values.nats.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "dynamo.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- printf "http://%s-etcd.%s.svc:2379" (include "dynamo.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- if not .Values.etcd.externalEndpoints -}}
{{- fail "etcd.externalEndpoints is required when etcd.enabled is false" -}}
{{- end -}}
{{- join "," .Values.etcd.externalEndpoints -}}
{{- end -}}
{{- end -}}
