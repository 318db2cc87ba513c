{{/* Names and labels shared by every template. */}}

{{- define "voicetrack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-voicetrack`, or the release name when it already contains the chart name. */}}
{{- define "voicetrack.fullname" -}}
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

{{- define "voicetrack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voicetrack.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "voicetrack.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "voicetrack.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: voicetrack
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- /* The common labels with another component (bot, web): `voicetrack.labels` carries the
operator's selector labels, whose component would otherwise be written twice. Call with
(dict "ctx" $ "component" "bot"). */ -}}
{{- define "voicetrack.componentLabels" -}}
{{- $l := include "voicetrack.labels" .ctx | fromYaml -}}
{{- $_ := set $l "app.kubernetes.io/component" .component -}}
{{- toYaml $l -}}
{{- end }}

{{- define "voicetrack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "voicetrack.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "voicetrack.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the S3 keys (`accessKey`, `secretKey`); pods read the same name. */}}
{{- define "voicetrack.s3SecretName" -}}
{{- default .Values.s3.secretName .Values.s3.existingSecret }}
{{- end }}

{{/* "true" when the chart hands out S3 keys: `s3.existingSecret`, or `s3.accessKey` and
     `s3.secretKey`, or the bundled SeaweedFS (`seaweedfs.enabled`: generated keys). Empty: no key anywhere, every component uses the standard AWS
     credential chain. Half a pair fails the render. */}}
{{- define "voicetrack.s3Keys" -}}
{{- if and (not .Values.s3.existingSecret) (ne (empty .Values.s3.accessKey) (empty .Values.s3.secretKey)) }}
{{- fail "s3.accessKey and s3.secretKey go together: give both, or neither to use the AWS credential chain" }}
{{- end }}
{{- if or .Values.s3.existingSecret (and .Values.s3.accessKey .Values.s3.secretKey) .Values.seaweedfs.enabled }}true{{ end }}
{{- end }}

{{/* The S3 endpoint of the operator, the web page, the bot and `helm test`: the bundled
     SeaweedFS's (seaweedfs.host, else its Service) when seaweedfs.enabled, else s3.endpoint. */}}
{{- define "voicetrack.s3Endpoint" -}}
{{- if .Values.seaweedfs.enabled }}
{{- $host := default (printf "%s.%s.svc" (include "voicetrack.seaweedfsName" .) .Release.Namespace) .Values.seaweedfs.host }}
{{- printf "http://%s:%v" $host .Values.seaweedfs.ports.s3 }}
{{- else }}
{{- .Values.s3.endpoint }}
{{- end }}
{{- end }}

{{/* The S3 endpoint of recorder and transcoder pods: s3.podEndpoint, else the one above. */}}
{{- define "voicetrack.s3PodEndpoint" -}}
{{- default (include "voicetrack.s3Endpoint" .) .Values.s3.podEndpoint }}
{{- end }}

{{/* The peers (NetworkPolicyPeer list, YAML) of the S3 egress rules: networkPolicy.s3.peers;
     when empty and the bundled SeaweedFS is the store of every pod (seaweedfs.enabled, no
     seaweedfs.host, no s3.podEndpoint: that one, a proxy say, wins for the operator's pods),
     its pods in the release namespace; else nothing (any address on the port: an external
     S3's addresses are known only to you). */}}
{{- define "voicetrack.s3Peers" -}}
{{- if .Values.networkPolicy.s3.peers }}
{{- toYaml .Values.networkPolicy.s3.peers }}
{{- else if and .Values.seaweedfs.enabled (not .Values.seaweedfs.host) (not .Values.s3.podEndpoint) }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Release.Namespace }}
  podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ include "voicetrack.name" . }}
      app.kubernetes.io/instance: {{ .Release.Name }}
      app.kubernetes.io/component: seaweedfs
{{- end }}
{{- end }}

{{/* The bundled SeaweedFS's StatefulSet, Service and NetworkPolicy name. */}}
{{- define "voicetrack.seaweedfsName" -}}
{{- printf "%s-seaweedfs" (include "voicetrack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The keys of the chart-managed S3 Secret as a dict {accessKey, secretKey}, in JSON:
     `s3.accessKey`/`s3.secretKey`; else, with the bundled SeaweedFS, the ones in the
     release's Secret (kept across upgrades, read back with `lookup`), else generated once
     per render (remembered in .Values, so the Secret and the pod checksum agree). */}}
{{- define "voicetrack.s3KeyPair" -}}
{{- if and .Values.s3.accessKey .Values.s3.secretKey }}
{{- dict "accessKey" .Values.s3.accessKey "secretKey" .Values.s3.secretKey | toJson }}
{{- else }}
{{- if not (hasKey .Values.seaweedfs "generatedKeys") }}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "voicetrack.s3SecretName" .) }}
{{- $keys := dict "accessKey" (printf "vt%s" (randAlphaNum 18 | lower)) "secretKey" (randAlphaNum 40) }}
{{- if and $old $old.data (hasKey $old.data "accessKey") (hasKey $old.data "secretKey") }}
{{- $keys = dict "accessKey" (index $old.data "accessKey" | b64dec) "secretKey" (index $old.data "secretKey" | b64dec) }}
{{- end }}
{{- $_ := set .Values.seaweedfs "generatedKeys" $keys }}
{{- end }}
{{- .Values.seaweedfs.generatedKeys | toJson }}
{{- end }}
{{- end }}

{{/* VOICETRACK_S3_ACCESS_KEY and VOICETRACK_S3_SECRET_KEY from the Secret `.secret`
     (call with (dict "secret" NAME)), for a container's env list. */}}
{{- define "voicetrack.s3KeyEnv" -}}
- name: VOICETRACK_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: accessKey
- name: VOICETRACK_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: secretKey
{{- end }}

{{- define "voicetrack.databaseSecretName" -}}
{{- default (printf "%s-database" (include "voicetrack.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{- define "voicetrack.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}

{{/* "true" when the database is the chart's SQLite file (no existingSecret, no bundled
     PostgreSQL, a sqlite URL). */}}
{{- define "voicetrack.embeddedDatabase" -}}
{{- if and (not .Values.database.existingSecret) (not .Values.postgresql.enabled) (hasPrefix "sqlite" .Values.database.url) }}true{{ end }}
{{- end }}

{{/* "true" when the operator mounts its data volume (PVC or emptyDir) at mountPath. */}}
{{- define "voicetrack.dataVolume" -}}
{{- if or (include "voicetrack.embeddedDatabase" .) .Values.persistence.withExternalDatabase }}true{{ end }}
{{- end }}

{{/* The claim the data volume uses when persistence is enabled. */}}
{{- define "voicetrack.claimName" -}}
{{- default (printf "%s-data" (include "voicetrack.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* The Secret holding the bot token (`token`); the recorder pod reads the same name. */}}
{{- define "voicetrack.discordSecretName" -}}
{{- default .Values.discord.secretName .Values.discord.existingSecret }}
{{- end }}

{{/* The bundled PostgreSQL's StatefulSet, Service and Secret name. */}}
{{- define "voicetrack.postgresqlName" -}}
{{- printf "%s-postgresql" (include "voicetrack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The bundled PostgreSQL's app password: `postgresql.password`; else the one in the
     release's Secret (kept across upgrades and, with its keep policy, across an uninstall);
     else generated, once per render (remembered in .Values, so the Secret and the database
     URL agree). */}}
{{- define "voicetrack.postgresqlPassword" -}}
{{- include "voicetrack.postgresqlSecretValue" (dict "ctx" . "key" "password" "value" .Values.postgresql.password) }}
{{- end }}

{{/* The bundled PostgreSQL's read-only role's password (key `readOnlyPassword`), the same
     way as voicetrack.postgresqlPassword. */}}
{{- define "voicetrack.postgresqlReadOnlyPassword" -}}
{{- include "voicetrack.postgresqlSecretValue" (dict "ctx" . "key" "readOnlyPassword" "value" .Values.postgresql.readOnlyPassword) }}
{{- end }}

{{/* One key of the bundled PostgreSQL's Secret: `value` when set; else the Secret's
     (`lookup`); else `randAlphaNum 32`, remembered in .Values.postgresql.generated. */}}
{{- define "voicetrack.postgresqlSecretValue" -}}
{{- $ctx := .ctx }}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $gen := default dict $ctx.Values.postgresql.generated }}
{{- if not (hasKey $gen .key) }}
{{- $old := lookup "v1" "Secret" $ctx.Release.Namespace (include "voicetrack.postgresqlName" $ctx) }}
{{- if and $old $old.data (hasKey $old.data .key) }}
{{- $_ := set $gen .key (index $old.data .key | b64dec) }}
{{- else }}
{{- $_ := set $gen .key (randAlphaNum 32) }}
{{- end }}
{{- $_ := set $ctx.Values.postgresql "generated" $gen }}
{{- end }}
{{- index $gen .key }}
{{- end }}
{{- end }}

{{/* The bundled PostgreSQL's SQLAlchemy URL (host: postgresql.host, else the Service). */}}
{{- define "voicetrack.postgresqlUrl" -}}
{{- $pg := .Values.postgresql }}
{{- $host := default (printf "%s.%s.svc" (include "voicetrack.postgresqlName" .) .Release.Namespace) $pg.host }}
{{- printf "postgresql+psycopg://%s:%s@%s:%v/%s" $pg.user (include "voicetrack.postgresqlPassword" . | urlquery) $host $pg.port $pg.database }}
{{- end }}

{{/* The same URL as the read-only role (postgresql.readOnlyUser): the web page's and the
     `helm test` pod's, which only read. */}}
{{- define "voicetrack.postgresqlReadOnlyUrl" -}}
{{- $pg := .Values.postgresql }}
{{- $host := default (printf "%s.%s.svc" (include "voicetrack.postgresqlName" .) .Release.Namespace) $pg.host }}
{{- printf "postgresql+psycopg://%s:%s@%s:%v/%s" $pg.readOnlyUser (include "voicetrack.postgresqlReadOnlyPassword" . | urlquery) $host $pg.port $pg.database }}
{{- end }}

{{/* "true" when the readers (web page, `helm test`) get the bundled PostgreSQL's
     read-only URL: the operator's database is the bundled one (no database.existingSecret). */}}
{{- define "voicetrack.readOnlyDatabase" -}}
{{- if and .Values.postgresql.enabled (not .Values.database.existingSecret) }}true{{ end }}
{{- end }}

{{/* The Secret and key of the readers' database URL: the read-only one with the bundled
     PostgreSQL, else the operator's. */}}
{{- define "voicetrack.readerDatabaseSecretName" -}}
{{- if include "voicetrack.readOnlyDatabase" . }}{{ printf "%s-database-readonly" (include "voicetrack.fullname" .) }}{{ else }}{{ include "voicetrack.databaseSecretName" . }}{{ end }}
{{- end }}

{{- define "voicetrack.readerDatabaseSecretKey" -}}
{{- if include "voicetrack.readOnlyDatabase" . }}url{{ else }}{{ include "voicetrack.databaseSecretKey" . }}{{ end }}
{{- end }}

{{/* The namespaces where NetworkPolicies confine recorder and transcoder pods, comma-separated:
     the release namespace, the bot's (bot.namespace, where its sessions run, when bot.enabled)
     and networkPolicy.namespaces (empty without networkPolicy.enabled).
     networkpolicy.yaml renders its policies in each; the operator refuses sessions anywhere
     else (VOICETRACK_POLICY_NAMESPACES): one list for both. */}}
{{- define "voicetrack.policyNamespaces" -}}
{{- if .Values.networkPolicy.enabled }}
{{- $bot := list }}
{{- if .Values.bot.enabled }}{{ $bot = list (default .Release.Namespace .Values.bot.namespace) }}{{ end }}
{{- concat (list .Release.Namespace) $bot (.Values.networkPolicy.namespaces | default list) | uniq | join "," }}
{{- end }}
{{- end }}

{{/*
"true" when namespace `ns` is served by the kopf globs `globs` (operator.watchNamespaces: one
inclusive glob matches, `*` when there are only exclusions, and no `!` glob does; the same
rule as the operator's `watched_namespaces`), or when `globs` is empty (the whole cluster).
The schema admits only [a-z0-9*?[]-] in a glob, so `*` -> `.*` and `?` -> `.` make it a regex.
*/}}
{{- define "voicetrack.served" -}}
{{- $ns := index . 0 }}{{- $globs := index . 1 }}
{{- if not $globs }}true{{- else }}
{{- $in := false }}{{- $out := false }}{{- $inclusive := 0 }}
{{- range $g := $globs }}
{{- $neg := hasPrefix "!" $g }}
{{- $re := printf "^%s$" (trimPrefix "!" $g | replace "*" ".*" | replace "?" ".") }}
{{- if not $neg }}{{ $inclusive = add1 $inclusive }}{{ end }}
{{- if regexMatch $re $ns }}{{ if $neg }}{{ $out = true }}{{ else }}{{ $in = true }}{{ end }}{{ end }}
{{- end }}
{{- if and (or $in (eq $inclusive 0)) (not $out) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Refuse operator.watchNamespaces that leave recording broken: the bot's namespace not
served (its sessions would never be seen), a networkPolicy.namespaces entry not served,
or, with the NetworkPolicies on, a namespace named exactly in watchNamespaces that is not
in the policy list (every session there would be Refused, NoNetworkPolicy).
*/}}
{{- define "voicetrack.checkWatchNamespaces" -}}
{{- $globs := .Values.operator.watchNamespaces | default list }}
{{- if $globs }}
{{- if .Values.bot.enabled }}
{{- $botNs := default .Release.Namespace .Values.bot.namespace }}
{{- if not (include "voicetrack.served" (list $botNs $globs)) }}
{{- fail (printf "operator.watchNamespaces %s does not serve the bot's namespace %s (bot.namespace): its sessions would never be seen" (join "," $globs) $botNs) }}
{{- end }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
{{- range $ns := .Values.networkPolicy.namespaces | default list }}
{{- if not (include "voicetrack.served" (list $ns $globs)) }}
{{- fail (printf "networkPolicy.namespaces lists %s, which operator.watchNamespaces %s does not serve" $ns (join "," $globs)) }}
{{- end }}
{{- end }}
{{- $policy := splitList "," (include "voicetrack.policyNamespaces" .) }}
{{- range $g := $globs }}
{{- if and (not (hasPrefix "!" $g)) (regexMatch "^[a-z0-9-]+$" $g) (not (has $g $policy)) }}
{{- fail (printf "operator.watchNamespaces serves %s, which is not in networkPolicy.namespaces (nor the release's or the bot's namespace): every session there would be Refused (NoNetworkPolicy)" $g) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- /*
The ClusterKopfPeering of this release's operator replicas: operator.ha.peeringName, or by
default the release's full name (one peering per release: it is cluster-scoped, and the
replicas of two releases in one would let only one release act). A release that already
owns the ClusterKopfPeering `voicetrack` (the default before) keeps that name on upgrade:
renaming it would roll new replicas into a new, empty peering, which act at once, while the
old ones, whose peering is deleted, go on acting until they stop (both act for the rollout).
`lookup` sees nothing under `helm template` (no cluster): the release's full name.
*/}}
{{- define "voicetrack.peeringName" -}}
{{- if .Values.operator.ha.peeringName -}}
{{- .Values.operator.ha.peeringName -}}
{{- else -}}
{{- $old := lookup "kopf.dev/v1" "ClusterKopfPeering" "" "voicetrack" -}}
{{- $annotations := dig "metadata" "annotations" (dict) ($old | default (dict)) -}}
{{- if and (eq (get $annotations "meta.helm.sh/release-name") .Release.Name) (eq (get $annotations "meta.helm.sh/release-namespace") .Release.Namespace) -}}
voicetrack
{{- else -}}
{{- include "voicetrack.fullname" . -}}
{{- end -}}
{{- end -}}
{{- end }}
