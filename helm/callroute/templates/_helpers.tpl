{{/* Names and labels shared by every template. */}}
{{- define "callroute.name" -}}{{ .Release.Name }}-callroute{{- end -}}

{{- define "callroute.labels" -}}
app.kubernetes.io/name: callroute
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* etcd client endpoints: the chart's StatefulSet members, or the external list. */}}
{{- define "callroute.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $n := include "callroute.name" . -}}
{{- $eps := list -}}
{{- range $i, $_ := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "%s-etcd-%d.%s-etcd-peer.%s.svc:%d" $n $i $n $.Release.Namespace (int $.Values.etcd.clientPort)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- required "etcd.externalEndpoints is required when etcd.enabled is false" (join "," .Values.etcd.externalEndpoints) -}}
{{- end -}}
{{- end -}}

{{/* Control-plane gRPC endpoints for agents: every replica through the one Service. */}}
{{- define "callroute.controlplaneEndpoints" -}}
{{ include "callroute.name" . }}-controlplane.{{ .Release.Namespace }}.svc:{{ .Values.controlplane.grpcPort }}
{{- end -}}

{{- define "callroute.topologyConfigMap" -}}
{{- if .Values.topology.existingConfigMap -}}{{ .Values.topology.existingConfigMap }}{{- else -}}{{ include "callroute.name" . }}-topology{{- end -}}
{{- end -}}

{{/* https:// URLs of the chart's etcd members, for etcdctl. */}}
{{- define "callroute.etcdURLs" -}}
{{- $urls := list -}}
{{- range (split "," (include "callroute.etcdEndpoints" .)) -}}
{{- $urls = append $urls (printf "https://%s" .) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* auth (etcd client-certificate users) is meaningless without TLS: refuse the combination. */}}
{{/* Off loopback the processes refuse to run without TLS and authentication unless --insecure: */}}
{{/* say so at render time instead of in a crash loop. */}}
{{- define "callroute.checkSecurity" -}}
{{- if and .Values.auth.enabled (not .Values.tls.enabled) -}}
{{- fail "auth.enabled needs tls.enabled: etcd users are the CNs of client certificates" -}}
{{- end -}}
{{- if and (not .Values.insecure) (not (and .Values.tls.enabled .Values.auth.enabled)) -}}
{{- fail "tls.enabled and auth.enabled are required; insecure: true runs without them (a lab, never production)" -}}
{{- end -}}
{{- end -}}
