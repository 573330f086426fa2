{{- define "eventstore.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "eventstore.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "eventstore.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "eventstore.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Secrets are mounted as files; the processes read EVENTSTORE_*_FILE (never env values). */}}
{{- define "eventstore.secretEnv" -}}
{{- with .Values.cassandra.passwordSecret.name }}
- name: EVENTSTORE_CASSANDRA_PASSWORD_FILE
  value: /var/run/secrets/eventstore/cassandra-password/{{ $.Values.cassandra.passwordSecret.key }}
{{- end }}
{{- with .Values.cassandra.tlsSecret.name }}
- name: EVENTSTORE_CASSANDRA_TLS_CA_FILE
  value: /var/run/secrets/eventstore/cassandra-tls/ca.crt
{{- end }}
{{- with .Values.kafka.saslPasswordSecret.name }}
- name: EVENTSTORE_KAFKA_SASL_PASSWORD_FILE
  value: /var/run/secrets/eventstore/kafka-password/{{ $.Values.kafka.saslPasswordSecret.key }}
{{- end }}
{{- with .Values.kafka.tlsSecret.name }}
- name: EVENTSTORE_KAFKA_SSL_CA_FILE
  value: /var/run/secrets/eventstore/kafka-tls/ca.crt
{{- end }}
{{- with .Values.opensearch.passwordSecret.name }}
- name: EVENTSTORE_OPENSEARCH_PASSWORD_FILE
  value: /var/run/secrets/eventstore/opensearch-password/{{ $.Values.opensearch.passwordSecret.key }}
{{- end }}
{{- with .Values.opensearch.caSecret.name }}
- name: EVENTSTORE_OPENSEARCH_CA_FILE
  value: /var/run/secrets/eventstore/opensearch-ca/{{ $.Values.opensearch.caSecret.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "eventstore.secretVolumes" -}}
{{- range $name, $secret := dict "cassandra-password" .Values.cassandra.passwordSecret.name "cassandra-tls" .Values.cassandra.tlsSecret.name "kafka-password" .Values.kafka.saslPasswordSecret.name "kafka-tls" .Values.kafka.tlsSecret.name "opensearch-password" .Values.opensearch.passwordSecret.name "opensearch-ca" .Values.opensearch.caSecret.name }}
{{- if $secret }}
- name: {{ $name }}
  secret:
    secretName: {{ $secret }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "eventstore.secretMounts" -}}
{{- range $name, $secret := dict "cassandra-password" .Values.cassandra.passwordSecret.name "cassandra-tls" .Values.cassandra.tlsSecret.name "kafka-password" .Values.kafka.saslPasswordSecret.name "kafka-tls" .Values.kafka.tlsSecret.name "opensearch-password" .Values.opensearch.passwordSecret.name "opensearch-ca" .Values.opensearch.caSecret.name }}
{{- if $secret }}
- name: {{ $name }}
  mountPath: /var/run/secrets/eventstore/{{ $name }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Refuse, at render time and naming the value to change, what the server would refuse at
start (or what cannot work). Included by server.yaml. */}}
{{- define "eventstore.checkServerSecurity" -}}
{{- $tls := .Values.server.tls -}}
{{- if and $tls.enabled (not $tls.secretName) -}}
{{- fail "server.tls.secretName is required when server.tls.enabled is true: the name of a kubernetes.io/tls Secret (tls.crt, tls.key)" -}}
{{- end -}}
{{- if and $tls.clientCASecretName (not $tls.enabled) -}}
{{- fail "server.tls.clientCASecretName (mutual TLS) needs server.tls.enabled=true and server.tls.secretName: client certificates can only be verified over TLS" -}}
{{- end -}}
{{- if .Values.auth.enabled -}}
{{- $_ := required "auth.permissionsSecretName is required when auth.enabled is true: the name of a Secret with the key permissions.yaml (see values.yaml), or set auth.enabled=false to run WITHOUT authentication" .Values.auth.permissionsSecretName -}}
{{- end -}}
{{- $health := int .Values.server.healthPort -}}
{{- if or (eq $health (int .Values.server.port)) (eq $health (int .Values.server.metricsPort)) -}}
{{- fail (printf "server.healthPort (%d) must differ from server.port and server.metricsPort" $health) -}}
{{- end -}}
{{- if .Values.server.http.enabled -}}
{{- $http := int .Values.server.http.port -}}
{{- if or (eq $http (int .Values.server.port)) (eq $http (int .Values.server.metricsPort)) (eq $http $health) -}}
{{- fail (printf "server.http.port (%d) must differ from server.port, server.metricsPort and server.healthPort" $http) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "eventstore.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "eventstore.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: ["ALL"]}
{{- end -}}
