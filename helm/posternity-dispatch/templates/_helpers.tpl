{{/*
Names, labels, the rendered dispatchd.toml, and the checks that refuse values which would deploy
something broken. Every template includes "posternity-dispatch.validate" through the config.
*/}}

{{- define "posternity-dispatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object-name prefix; role suffixes (-fanout, -sender-metrics) must still fit in 63. */}}
{{- define "posternity-dispatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "posternity-dispatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "posternity-dispatch.labels" -}}
helm.sh/chart: {{ include "posternity-dispatch.chart" . }}
app.kubernetes.io/name: {{ include "posternity-dispatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: posternity-dispatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one role: (dict "root" $ "role" "sender"). */}}
{{- define "posternity-dispatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "posternity-dispatch.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/* All labels of one role's objects: (dict "root" $ "role" "sender"). */}}
{{- define "posternity-dispatch.roleLabels" -}}
{{ include "posternity-dispatch.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "posternity-dispatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "posternity-dispatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "posternity-dispatch.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Where the configuration and the tokens file are mounted in the pods. */}}
{{- define "posternity-dispatch.configDir" -}}/etc/dispatch{{- end -}}
{{- define "posternity-dispatch.configPath" -}}/etc/dispatch/dispatchd.toml{{- end -}}
{{/* Not under the ConfigMap's mount: a mount point nested in a ConfigMap volume is fragile. */}}
{{- define "posternity-dispatch.tokensDir" -}}/etc/dispatch-tokens{{- end -}}

{{/* The Secret holding the API tokens file, and its key (the key's extension picks the format). */}}
{{- define "posternity-dispatch.tokensSecretName" -}}
{{- if .Values.api.existingSecret -}}
{{- .Values.api.existingSecret -}}
{{- else -}}
{{- printf "%s-api-tokens" (include "posternity-dispatch.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- define "posternity-dispatch.tokensSecretKey" -}}
{{- if .Values.api.existingSecret -}}
{{- .Values.api.existingSecretKey -}}
{{- else -}}
tokens.json
{{- end -}}
{{- end -}}

{{/*
A value of the configuration with the binary's default when values leave it out:
(dict "root" $ "table" "sender" "key" "drain_timeout_ms" "default" 25000).
*/}}
{{- define "posternity-dispatch.configValue" -}}
{{- $table := get (.root.Values.config | default dict) .table | default dict -}}
{{- $value := get $table .key -}}
{{- if or (kindIs "invalid" $value) (eq (toString $value) "") -}}
{{- .default -}}
{{- else -}}
{{- $value -}}
{{- end -}}
{{- end -}}

{{- define "posternity-dispatch.topicPrefix" -}}
{{- include "posternity-dispatch.configValue" (dict "root" . "table" "kafka" "key" "topic_prefix" "default" "") -}}
{{- end -}}

{{/*
The configuration as dispatchd reads it: `config` from values plus the keys the chart owns (the
listeners, which must bind outside loopback in a pod, and the mounted tokens file).
*/}}
{{- define "posternity-dispatch.effectiveConfig" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- $metrics := get $config "metrics" | default dict -}}
{{- $_ := set $metrics "listen" (printf "%s:%d" .Values.listenAddress (int .Values.metrics.port)) -}}
{{- $_ := set $config "metrics" $metrics -}}
{{- $api := get $config "api" | default dict -}}
{{- $_ := set $api "listen" (printf "%s:%d" .Values.listenAddress (int .Values.api.port)) -}}
{{- $_ := set $api "tokens_file" (printf "%s/%s" (include "posternity-dispatch.tokensDir" .) (include "posternity-dispatch.tokensSecretKey" .)) -}}
{{- $_ := set $config "api" $api -}}
{{- toYaml $config -}}
{{- end -}}

{{/* dispatchd.toml: a header, then every table of the effective configuration. */}}
{{- define "posternity-dispatch.configToml" -}}
{{- include "posternity-dispatch.validate" . -}}
# dispatchd configuration rendered by the posternity-dispatch chart from .Values.config.
# Each fan-out pod sets fanout.transactional_id through DISPATCH_FANOUT__TRANSACTIONAL_ID.
{{- $config := include "posternity-dispatch.effectiveConfig" . | fromYaml -}}
{{- range $table, $body := $config }}
{{- if not (kindIs "map" $body) }}
{{- fail (printf "config.%s: must be a table (a map of keys), as in dispatchd.toml" $table) }}
{{- end }}

{{ include "posternity-dispatch.tomlTable" (dict "path" $table "table" $body) }}
{{- end }}
{{- end -}}

{{/*
One TOML table and its sub-tables: (dict "path" "sender.endpoint" "table" $map). Scalars and
arrays first (TOML puts every key after a sub-table header into that sub-table), then sub-tables.
Null and empty-string values are left out, so the binary's default applies. Values of
kafka.librdkafka are always strings (librdkafka settings are strings).
*/}}
{{- define "posternity-dispatch.tomlTable" -}}
{{- $path := .path -}}
{{- $stringly := eq $path "kafka.librdkafka" -}}
[{{ $path }}]
{{- range $key, $value := .table }}
{{- if and (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{ include "posternity-dispatch.tomlKey" $key }} = {{ include "posternity-dispatch.tomlValue" (dict "value" $value "path" (printf "%s.%s" $path $key) "stringly" $stringly) }}
{{- end }}
{{- end }}
{{- range $key, $value := .table }}
{{- if and (kindIs "map" $value) $value }}

{{ include "posternity-dispatch.tomlTable" (dict "path" (printf "%s.%s" $path (include "posternity-dispatch.tomlKey" $key)) "table" $value) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A bare key when TOML allows one, else a quoted one (librdkafka keys contain dots). */}}
{{- define "posternity-dispatch.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/*
One TOML value: (dict "value" $v "path" "retry.delays" "stringly" false). YAML numbers arrive
as float64: whole ones are written as integers (the binary's counts are integers).
*/}}
{{- define "posternity-dispatch.tomlValue" -}}
{{- $value := .value -}}
{{- if .stringly -}}
{{- if or (kindIs "map" $value) (kindIs "slice" $value) -}}
{{- fail (printf "config.%s: must be a string" .path) -}}
{{- end -}}
{{- toString $value | toJson -}}
{{- else if kindIs "string" $value -}}
{{- toJson $value -}}
{{- else if kindIs "bool" $value -}}
{{- ternary "true" "false" $value -}}
{{- else if or (kindIs "float64" $value) (kindIs "float32" $value) -}}
{{- if eq (float64 $value) (floor $value) -}}
{{- printf "%d" (int64 $value) -}}
{{- else -}}
{{- toString $value -}}
{{- end -}}
{{- else if or (kindIs "int" $value) (kindIs "int64" $value) -}}
{{- $value -}}
{{- else if kindIs "slice" $value -}}
{{- $path := .path -}}
{{- $items := list -}}
{{- range $value -}}
{{- if or (kindIs "map" .) (kindIs "slice" .) -}}
{{- fail (printf "config.%s: lists of tables or lists are not rendered by the chart" $path) -}}
{{- end -}}
{{- $items = append $items (include "posternity-dispatch.tomlValue" (dict "value" . "path" $path "stringly" false)) -}}
{{- end -}}
[{{ join ", " $items }}]
{{- else -}}
{{- fail (printf "config.%s: unsupported value %v" .path $value) -}}
{{- end -}}
{{- end -}}

{{/*
Checks that refuse values which would render a broken installation. Each message names the value
to change and why.
*/}}
{{- define "posternity-dispatch.validate" -}}
{{- $config := .Values.config | default dict -}}
{{- $metrics := get $config "metrics" | default dict -}}
{{- $api := get $config "api" | default dict -}}
{{- $fanout := get $config "fanout" | default dict -}}
{{- if hasKey $metrics "listen" -}}
{{- fail "config.metrics.listen: set by the chart from listenAddress and metrics.port (probes and Services use the same port); remove it" -}}
{{- end -}}
{{- if hasKey $api "listen" -}}
{{- fail "config.api.listen: set by the chart from listenAddress and api.port; remove it" -}}
{{- end -}}
{{- if or (hasKey $api "tokens") (hasKey $api "tokens_file") -}}
{{- fail "config.api.tokens / tokens_file: tokens are credentials and do not go into the ConfigMap; use api.tokens (a Secret the chart creates) or api.existingSecret" -}}
{{- end -}}
{{- if get $fanout "transactional_id" -}}
{{- fail "config.fanout.transactional_id: must differ per fan-out pod, so the chart sets it from the pod name (fanout.transactionalIdPrefix); remove it" -}}
{{- end -}}
{{- $domainPartitions := int (include "posternity-dispatch.configValue" (dict "root" . "table" "topics" "key" "domain_partitions" "default" 12)) -}}
{{- $deliveryPartitions := int (include "posternity-dispatch.configValue" (dict "root" . "table" "topics" "key" "delivery_partitions" "default" 24)) -}}
{{- $keda := .Values.autoscaling.keda.enabled -}}
{{/* Consumers beyond the partition count get no partition: they would sit idle. */}}
{{- range $role, $partitions := dict "fanout" $domainPartitions "sender" $deliveryPartitions -}}
{{- $values := index $.Values $role -}}
{{- $key := ternary "config.topics.domain_partitions" "config.topics.delivery_partitions" (eq $role "fanout") -}}
{{- if $values.autoscaling.enabled -}}
{{- if gt (int $values.autoscaling.maxReplicas) $partitions -}}
{{- fail (printf "%s.autoscaling.maxReplicas (%d) exceeds %s (%d): a %s pod beyond the partition count gets no partition and sits idle" $role (int $values.autoscaling.maxReplicas) $key $partitions $role) -}}
{{- end -}}
{{- if gt (int $values.autoscaling.minReplicas) (int $values.autoscaling.maxReplicas) -}}
{{- fail (printf "%s.autoscaling.minReplicas exceeds %s.autoscaling.maxReplicas" $role $role) -}}
{{- end -}}
{{- if and (lt (int $values.autoscaling.minReplicas) 1) (or (not $keda) (eq $role "sender")) -}}
{{- fail (printf "%s.autoscaling.minReplicas must be at least 1 (%s)" $role (ternary "a sender scaled to zero never reads the retry tiers, whose records fall due without new lag on the watched topics" "scaling to zero needs KEDA; a plain HPA cannot" (eq $role "sender"))) -}}
{{- end -}}
{{- else if gt (int $values.replicas) $partitions -}}
{{- fail (printf "%s.replicas (%d) exceeds %s (%d): a %s pod beyond the partition count gets no partition and sits idle" $role (int $values.replicas) $key $partitions $role) -}}
{{- end -}}
{{- end -}}
{{- if and $keda .Values.fanout.autoscaling.enabled (get $fanout "domain_topic_pattern") -}}
{{- fail "config.fanout.domain_topic_pattern: KEDA needs the domain topics by name (one lag trigger per topic); list them in config.fanout.domain_topics and leave the pattern empty, or set fanout.autoscaling.enabled=false" -}}
{{- end -}}
{{/* Grace periods against the drain deadlines the binary works to on SIGTERM. */}}
{{- $drainMs := int64 (include "posternity-dispatch.configValue" (dict "root" . "table" "sender" "key" "drain_timeout_ms" "default" 25000)) -}}
{{- if lt (mul (int64 .Values.sender.terminationGracePeriodSeconds) 1000) (add $drainMs 5000) -}}
{{- fail (printf "sender.terminationGracePeriodSeconds (%d s) must exceed config.sender.drain_timeout_ms (%d ms) by at least 5 s: after draining in-flight requests the sender commits offsets and flushes attempt records; a kill before that repeats deliveries" (int64 .Values.sender.terminationGracePeriodSeconds) $drainMs) -}}
{{- end -}}
{{- $transactionMs := int64 (include "posternity-dispatch.configValue" (dict "root" . "table" "fanout" "key" "transaction_timeout_ms" "default" 60000)) -}}
{{- if lt (mul (int64 .Values.fanout.terminationGracePeriodSeconds) 1000) $transactionMs -}}
{{- fail (printf "fanout.terminationGracePeriodSeconds (%d s) must be at least config.fanout.transaction_timeout_ms (%d ms): SIGTERM finishes the open transaction first" (int64 .Values.fanout.terminationGracePeriodSeconds) $transactionMs) -}}
{{- end -}}
{{- $requestMs := int64 (include "posternity-dispatch.configValue" (dict "root" . "table" "api" "key" "request_timeout_ms" "default" 30000)) -}}
{{- if le (mul (int64 .Values.api.terminationGracePeriodSeconds) 1000) $requestMs -}}
{{- fail (printf "api.terminationGracePeriodSeconds (%d s) must exceed config.api.request_timeout_ms (%d ms): requests in flight finish on SIGTERM, and may take that long" (int64 .Values.api.terminationGracePeriodSeconds) $requestMs) -}}
{{- end -}}
{{- if and (not .Values.api.existingSecret) (not .Values.api.tokens) (not .Values.api.generateToken) -}}
{{- fail "api: no tokens (api.tokens, api.existingSecret, or api.generateToken=true): the API refuses to start without one" -}}
{{- end -}}
{{- range $i, $token := .Values.api.tokens -}}
{{- if not (and (kindIs "map" $token) $token.token) -}}
{{- fail (printf "api.tokens[%d]: needs a non-empty `token` (and optionally `account_id`)" $i) -}}
{{- end -}}
{{- end -}}
{{- range $i, $secret := .Values.kafkaSecrets -}}
{{- if not (and $secret.setting $secret.secretName $secret.secretKey) -}}
{{- fail (printf "kafkaSecrets[%d]: needs setting, secretName and secretKey" $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Environment of every dispatchd container: librdkafka secrets (each from its Secret, then merged
into one DISPATCH_KAFKA__LIBRDKAFKA inline table; the helper variables must not start with
DISPATCH_, which dispatchd would read as configuration keys), then extraEnv.
*/}}
{{- define "posternity-dispatch.commonEnv" -}}
# Static group membership (kafka.instance_id): the pod name is unique and survives a container
# restart, so a crashed process gets its partitions back at once instead of after the session
# timeout.
- name: DISPATCH_KAFKA__INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- range $i, $secret := .Values.kafkaSecrets }}
- name: KAFKA_SECRET_{{ $i }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret.secretName }}
      key: {{ $secret.secretKey }}
{{- end }}
{{- if .Values.kafkaSecrets }}
{{- $pairs := list }}
{{- range $i, $secret := .Values.kafkaSecrets }}
{{- $pairs = append $pairs (printf "%s=\"$(KAFKA_SECRET_%d)\"" (toJson $secret.setting) $i) }}
{{- end }}
- name: DISPATCH_KAFKA__LIBRDKAFKA
  value: {{ printf "{%s}" (join ", " $pairs) | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The pod template of one role: (dict "root" $ "role" "sender" "values" .Values.sender
"env" <extra env YAML> "ports" <extra ports YAML> "volumes"/"mounts" <extra YAML>
"annotations" <extra pod annotations YAML>).
*/}}
{{- define "posternity-dispatch.podTemplate" -}}
{{- $root := .root -}}
{{- $values := .values -}}
metadata:
  labels:
    {{- include "posternity-dispatch.selectorLabels" (dict "root" $root "role" .role) | nindent 4 }}
    app.kubernetes.io/part-of: posternity-dispatch
    {{- with $values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Pods restart when the rendered configuration changes: dispatchd reads it once at start.
    checksum/config: {{ include "posternity-dispatch.configToml" $root | sha256sum }}
    {{- with .annotations }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with $values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "posternity-dispatch.serviceAccountName" $root }}
  # dispatchd never calls the Kubernetes API.
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .role }}
      image: {{ include "posternity-dispatch.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command:
        {{- toYaml $root.Values.image.command | nindent 8 }}
      args: ["--config", {{ include "posternity-dispatch.configPath" $root | quote }}, {{ .role | quote }}]
      ports:
        - name: metrics
          containerPort: {{ $root.Values.metrics.port }}
          protocol: TCP
        {{- with .ports }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- $env := trim (printf "%s\n%s\n%s" (.env | default "") (include "posternity-dispatch.commonEnv" $root) (ternary (toYaml $values.extraEnv) "" (not (empty $values.extraEnv)))) }}
      {{- with $env }}
      env:
        {{- . | nindent 8 }}
      {{- end }}
      # /healthz answers as soon as the process serves HTTP; /readyz only once the role caught up
      # with its topics. A pod that is alive but not ready is never restarted for it.
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        {{- toYaml $values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        {{- toYaml $values.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ include "posternity-dispatch.configDir" $root }}
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- with .mounts }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $root.Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "posternity-dispatch.fullname" $root }}-config
    # The root filesystem is read-only; anything that wants a scratch file gets /tmp.
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- with .volumes }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with $root.Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or $root.Values.topologySpread.enabled $values.nodeSelector $values.tolerations $values.affinity }}
  {{- if $root.Values.topologySpread.enabled }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: {{ $root.Values.topologySpread.topologyKey }}
      whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "posternity-dispatch.selectorLabels" (dict "root" $root "role" .role) | nindent 10 }}
  {{- end }}
  {{- with $values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- end }}
{{- end -}}

{{/*
The tokens file of the chart-managed Secret: the tokens of values, else the file already in the
cluster (a generated token survives upgrades), else one generated operator token.
*/}}
{{- define "posternity-dispatch.apiTokensJson" -}}
{{- if .Values.api.tokens -}}
{{- $tokens := list -}}
{{- range .Values.api.tokens -}}
{{- $entry := dict "token" (toString .token) -}}
{{- if .account_id }}{{ $_ := set $entry "account_id" (toString .account_id) }}{{ end -}}
{{- $tokens = append $tokens $entry -}}
{{- end -}}
{{- dict "tokens" $tokens | toJson -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "posternity-dispatch.tokensSecretName" .) -}}
{{- if and $existing $existing.data (index $existing.data "tokens.json") -}}
{{- index $existing.data "tokens.json" | b64dec -}}
{{- else -}}
{{- dict "tokens" (list (dict "token" (randAlphaNum 48))) | toJson -}}
{{- end -}}
{{- end -}}
{{- end -}}
