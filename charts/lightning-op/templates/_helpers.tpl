{{/*
Names, labels and the pieces the operator's and the collector's pods share.
*/}}

{{- define "lightning-op.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: the release name when it already contains the chart name ("lightning-op"), else
"<release>-<chart>". Cut to 52 characters so "-collector" and the like still fit in 63.
*/}}
{{- define "lightning-op.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lightning-op.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lightning-op.labels" -}}
helm.sh/chart: {{ include "lightning-op.chart" . }}
app.kubernetes.io/name: {{ include "lightning-op.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lightning-op
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "operator"). */}}
{{- define "lightning-op.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lightning-op.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lightning-op.componentLabels" -}}
{{ include "lightning-op.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lightning-op.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lightning-op.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: include with (dict "image" .Values.operator.image "ctx" $). */}}
{{- define "lightning-op.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag | toString) }}
{{- end }}

{{- define "lightning-op.collectorName" -}}
{{- printf "%s-collector" (include "lightning-op.fullname" .) }}
{{- end }}

{{/* The collector Service's URL, whether or not this release runs the collector. */}}
{{- define "lightning-op.collectorServiceUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "lightning-op.collectorName" .) .Release.Namespace .Values.collector.service.port }}
{{- end }}

{{/* The collector URL the operator gives agents (LIGHTNING_COLLECTOR_URL): the release's own
collector, else collector.externalUrl, else the Service URL anyway (the operator needs a default;
NOTES says that no collector answers there). */}}
{{- define "lightning-op.collectorUrl" -}}
{{- if or .Values.collector.enabled (not .Values.collector.externalUrl) }}
{{- include "lightning-op.collectorServiceUrl" . }}
{{- else }}
{{- .Values.collector.externalUrl }}
{{- end }}
{{- end }}

{{/* Whether every operator.watchNamespaces entry is a plain namespace name ("true" or ""): kopf also
takes globs (team-*, [ab]*), negations (!kube-system) and comma-separated lists, which no label
selector can express. */}}
{{- define "lightning-op.watchesPlainNames" -}}
{{- $plain := true }}
{{- range .Values.operator.watchNamespaces }}{{ if regexMatch "[*?\\[!,]" . }}{{ $plain = false }}{{ end }}{{ end }}
{{- if and .Values.operator.watchNamespaces $plain }}true{{ end }}
{{- end }}

{{/* The namespaceSelector of the agents that may post episodes, as YAML ("{}": every namespace):
networkPolicy.agentNamespaceSelector, else the watched namespaces when they are plain names. */}}
{{- define "lightning-op.agentNamespaceSelector" -}}
{{- $agents := .Values.networkPolicy.agentNamespaceSelector }}
{{- if and (not $agents) (include "lightning-op.watchesPlainNames" .) }}
{{- $agents = dict "matchExpressions" (list (dict "key" "kubernetes.io/metadata.name" "operator" "In" "values" .Values.operator.watchNamespaces)) }}
{{- end }}
{{- toYaml (default (dict) $agents) }}
{{- end }}

{{- define "lightning-op.storeClaimName" -}}
{{- default (printf "%s-store" (include "lightning-op.fullname" .)) .Values.store.sqlite.persistence.existingClaim }}
{{- end }}

{{- define "lightning-op.modelsClaimName" -}}
{{- default (printf "%s-models" (include "lightning-op.fullname" .)) .Values.models.persistence.existingClaim }}
{{- end }}

{{/* Fails the render on settings that cannot work (together, or in this build). */}}
{{- define "lightning-op.validate" -}}
{{- if eq .Values.store.type "cosmos" }}
{{- /* Drop this check, and keep the one below, when store/cosmos.py exists. */}}
{{- fail "store.type cosmos is planned: the Azure Cosmos DB store is not available in this build yet, so the operator and the collector would refuse the cosmos:// URL and crash-loop. Use store.type sqlite" }}
{{- end }}
{{- if not (has .Values.store.type (list "sqlite" "cosmos")) }}
{{- fail (printf "store.type %q is not supported: use sqlite (cosmos is planned)" (toString .Values.store.type)) }}
{{- end }}
{{- with .Values.store.cosmos }}
{{- if and (eq $.Values.store.type "sqlite") (or .url .existingSecret.name) }}
{{- fail "store.cosmos is set but store.type is sqlite, so it would be ignored: the Azure Cosmos DB store is planned, not in this build. Remove store.cosmos.url and store.cosmos.existingSecret.name" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.store.type "sqlite") (gt (int .Values.collector.replicas) 1) }}
{{- fail (printf "collector.replicas is %v but store.type sqlite allows one writer: set collector.replicas=1" .Values.collector.replicas) }}
{{- end }}
{{- if and (eq .Values.store.type "cosmos") (not .Values.store.cosmos.url) (not .Values.store.cosmos.existingSecret.name) }}
{{- fail "store.type cosmos needs store.cosmos.existingSecret.name (a Secret holding the store URL) or store.cosmos.url (with workload identity)" }}
{{- end }}
{{- with .Values.collector }}
{{- if and .enabled .maxInflightBytes (lt (int64 .maxInflightBytes) (int64 .maxBodyBytes)) }}
{{- fail (printf "collector.maxInflightBytes %d is below collector.maxBodyBytes %d: the collector refuses to start, as a body of the largest allowed size could never be taken. Raise maxInflightBytes, or leave it empty (4 x maxBodyBytes)" (int64 .maxInflightBytes) (int64 .maxBodyBytes)) }}
{{- end }}
{{- $detectors := list "email" "phone" "credit_card" "ip" "ipv4" "ipv6" "bearer" "api_key" }}
{{- range .redaction.builtins }}
{{- if not (has . $detectors) }}
{{- fail (printf "collector.redaction.builtins: unknown detector %q: use %s (empty: all of them)" . (join ", " $detectors)) }}
{{- end }}
{{- end }}
{{- if and (not .enabled) .externalUrl (not (regexMatch "^https?://" .externalUrl)) }}
{{- fail (printf "collector.externalUrl %q is not an http(s) URL: agents' capture clients would turn capture off. Give http://host:port or https://host:port" .externalUrl) }}
{{- end }}
{{- end }}
{{- with .Values.models }}
{{- if and .enabled (not .persistence.existingClaim) (not .persistence.storageClass) }}
{{- fail "models.persistence.storageClass or models.persistence.existingClaim is required while models.enabled is true: the model volume is ReadWriteMany, which the default StorageClass of most clusters cannot provide (AKS managed-csi, EKS gp2/gp3, GKE, kind), so it and the operator would stay Pending. Set models.persistence.storageClass to a ReadWriteMany class (azurefile-csi on AKS, an NFS class), or models.persistence.existingClaim to a claim on shared storage (examples/models-volume.yaml), or models.enabled=false to install without fine-tuning" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The store URL (LIGHTNING_STORE) as one env entry. */}}
{{- define "lightning-op.storeEnv" -}}
- name: LIGHTNING_STORE
{{- if eq .Values.store.type "sqlite" }}
  value: {{ printf "sqlite:///%s/episodes.db" .Values.store.sqlite.mountPath | quote }}
{{- else if .Values.store.cosmos.existingSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.cosmos.existingSecret.name }}
      key: {{ .Values.store.cosmos.existingSecret.key }}
{{- else }}
  value: {{ .Values.store.cosmos.url | quote }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security profile, pod level. */}}
{{- define "lightning-op.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The restricted Pod Security profile, container level. */}}
{{- define "lightning-op.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod labels and annotations shared by both components. */}}
{{- define "lightning-op.podMetadata" -}}
labels:
  {{- include "lightning-op.selectorLabels" . | nindent 2 }}
  {{- with .ctx.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .ctx.Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A PersistentVolumeClaim: include with (dict "ctx" $ "name" NAME "persistence" VALUES). */}}
{{- define "lightning-op.claim" -}}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "lightning-op.labels" .ctx | nindent 4 }}
  {{- if .persistence.keep }}
  annotations:
    # Uninstalling the release (Helm) or deleting the Application (Argo CD) leaves the data.
    helm.sh/resource-policy: keep
    argocd.argoproj.io/sync-options: Delete=false
  {{- end }}
spec:
  accessModes:
    {{- toYaml .persistence.accessModes | nindent 4 }}
  {{- with .persistence.storageClass }}
  storageClassName: {{ . | quote }}
  {{- end }}
  resources:
    requests:
      storage: {{ .persistence.size }}
{{- end }}
