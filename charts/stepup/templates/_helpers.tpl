{{/* Names ---------------------------------------------------------------------------- */}}

{{- define "stepup.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every object. Cluster-scoped objects carry it too, so two releases
in one cluster need different full names (fullnameOverride). At most 40 characters, so that
"<fullname>-protect-webhook-configuration" stays a valid name.
*/}}
{{- define "stepup.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stepup.webhook.fullname" -}}{{ include "stepup.fullname" . }}-webhook{{- end }}
{{- define "stepup.controller.fullname" -}}{{ include "stepup.fullname" . }}-controller{{- end }}
{{- define "stepup.webhook.serviceAccount" -}}{{ include "stepup.fullname" . }}-webhook{{- end }}
{{- define "stepup.controller.serviceAccount" -}}{{ include "stepup.fullname" . }}-controller{{- end }}
{{- define "stepup.controller.clusterRole" -}}{{ include "stepup.fullname" . }}-controller{{- end }}
{{- define "stepup.leaseName" -}}{{ include "stepup.fullname" . }}-controller{{- end }}
{{- define "stepup.tlsSecret" -}}{{ .Values.tls.secretName | default (printf "%s-webhook-tls" (include "stepup.fullname" .)) }}{{- end }}
{{- define "stepup.certificate" -}}{{ include "stepup.fullname" . }}-webhook{{- end }}

{{/* The username of the controller's ServiceAccount: the only writer of grants. */}}
{{- define "stepup.controller.user" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "stepup.controller.serviceAccount" . }}
{{- end }}

{{/* Labels ---------------------------------------------------------------------------- */}}

{{- define "stepup.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stepup.labels" -}}
helm.sh/chart: {{ include "stepup.chart" . }}
{{ include "stepup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kube-stepup
{{- end }}

{{- define "stepup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stepup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: webhook, controller, ... (call with dict "ctx" $ "component" "webhook"). */}}
{{- define "stepup.componentLabels" -}}
{{ include "stepup.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "stepup.componentSelectorLabels" -}}
{{ include "stepup.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Image ----------------------------------------------------------------------------- */}}

{{- define "stepup.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* Durations -------------------------------------------------------------------------- */}}

{{/*
Milliseconds of a Go-style duration ("10s", "1m30s", "1500ms", "0"), as a float. The
schema restricts the syntax; this is used for the termination-grace check only.
*/}}
{{- define "stepup.durationMillis" -}}
{{- $total := 0.0 }}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h)" (toString .) -1 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $part | float64 }}
{{- $unit := regexReplaceAll "^[0-9]+(\\.[0-9]+)?" $part "" }}
{{- $scale := dict "ns" 0.000001 "us" 0.001 "µs" 0.001 "μs" 0.001 "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0 }}
{{- $total = addf $total (mulf $number (get $scale $unit)) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* Scheduling ------------------------------------------------------------------------ */}}

{{/*
topologySpreadConstraints with the component's labelSelector added where absent and
matchLabelKeys [pod-template-hash], so that a rolling update counts only the new pods.
Call with dict "ctx" $ "component" "webhook" "constraints" list.
*/}}
{{- define "stepup.topologySpread" -}}
{{- $selector := include "stepup.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | fromYaml }}
{{- $out := list }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- if not (hasKey $c "matchLabelKeys") }}
{{- $_ := set $c "matchLabelKeys" (list "pod-template-hash") }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Pod spec fragments shared by both Deployments (call with dict "ctx" $ "values" .Values.webhook). */}}
{{- define "stepup.podScheduling" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- include "stepup.topologySpread" (dict "ctx" $.ctx "component" $.component "constraints" .) | nindent 2 }}
{{- end }}
{{- end }}

{{/* A PodDisruptionBudget spec body (call with the component's podDisruptionBudget values). */}}
{{- define "stepup.pdbSpec" -}}
{{- if not (kindIs "invalid" .maxUnavailable) -}}
maxUnavailable: {{ .maxUnavailable }}
{{- else -}}
minAvailable: {{ .minAvailable }}
{{- end }}
{{- end }}

{{/* The master key: a volume named "keys" for both Deployments, mounted at /etc/stepup/keys. */}}
{{- define "stepup.keysSecret" -}}{{ .Values.keys.existingSecret | default (printf "%s-keys" (include "stepup.fullname" .)) }}{{- end }}
{{- define "stepup.keysVolume" -}}
- name: keys
{{- if .Values.keys.volume }}
  {{- toYaml .Values.keys.volume | nindent 2 }}
{{- else }}
  secret:
    secretName: {{ include "stepup.keysSecret" . }}
    defaultMode: 0440
    items:
    - key: master.key
      path: master.key
{{- end }}
{{- end }}
{{- define "stepup.keysMount" -}}
- name: keys
  mountPath: /etc/stepup/keys
  readOnly: true
{{- end }}

{{/*
The flags that decide admission, rendered once and given to both processes: the webhook decides
with them, the controller publishes them (ConfigMap stepup-decision) for `kubectl stepup check`.
*/}}
{{- define "stepup.decisionArgs" -}}
{{- $v := .Values.webhook -}}
- --namespace={{ .Release.Namespace }}
- --controller-user={{ include "stepup.controller.user" . }}
# The webhook's own requests never reach the webhook.
- --webhook-user=system:serviceaccount:{{ .Release.Namespace }}:{{ include "stepup.webhook.serviceAccount" . }}
{{- with .Values.rbac.adminGroups }}
- --admin-group={{ join "," . }}
{{- end }}
{{- with .Values.breakGlassGroups }}
- --break-glass-group={{ join "," . }}
{{- end }}
{{- with $v.exemptUsers }}
- --exempt-user={{ join "," . }}
{{- end }}
{{- with $v.exemptGroups }}
- --exempt-group={{ join "," . }}
{{- end }}
{{- with $v.exemptNamespaces }}
- --exempt-namespace={{ join "," . }}
{{- end }}
- --protect-policies={{ $v.protectPolicies }}
- --max-clock-skew={{ .Values.maxClockSkew }}
- --service-account-masks={{ .Values.serviceAccountMasks.enabled }}
- --trusted-service-account-namespace={{ join "," .Values.serviceAccountMasks.trustedNamespaces }}
- --sign-in-acr-extra={{ .Values.session.signInExtras.acr }}
- --sign-in-amr-extra={{ .Values.session.signInExtras.amr }}
- --sign-in-auth-time-extra={{ .Values.session.signInExtras.authTime }}
{{- end }}
