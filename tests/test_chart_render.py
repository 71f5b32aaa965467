"""The Helm chart rendered by Helm's own Go template engine (helm-python-sdk embeds it as a C
library: no helm binary, no cluster), then the manifests checked: every process gets its TLS,
token and etcd credentials, each center its own certificate, the switch port only from
switchCIDRs, the ACD port not exposed unless configured, the two-person rule on, and
`insecure` only when asked for.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "callroute"
CENTERS = ["north", "south", "west"]  # values.yaml's default centers


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="cr", namespace="cc", is_install=True)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def flag_values(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, a in enumerate(args):
        if a.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out[a] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def mounted_secrets(doc: dict[str, Any]) -> dict[str, str]:
    """mount path -> Secret name."""
    spec = doc["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    mounts = container(doc)["volumeMounts"]
    return {m["mountPath"]: secrets[m["name"]] for m in mounts if m["name"] in secrets}


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


def test_chart_lints_clean() -> None:
    assert helm.lint(str(CHART))["errors"] == []


def test_control_plane_gets_tls_tokens_etcd_credentials_and_two_person(default_docs: list) -> None:
    from controlplane.cli.services import add_controlplane_parser

    c = container(find(default_docs, "Deployment", "cr-callroute-controlplane"))
    args = c["args"]
    flags = flag_values(args)
    assert flags["--tls-cert"] == "/etc/callroute/tls/tls.crt"
    assert flags["--tls-ca"] == "/etc/callroute/tls/ca.crt"
    assert flags["--etcd-cert"] == "/etc/callroute/tls/tls.crt" and flags["--etcd-ca"]
    assert flags["--tokens"] == "/etc/callroute/tokens/tokens.yaml"
    assert "--insecure" not in args
    mounts = mounted_secrets(find(default_docs, "Deployment", "cr-callroute-controlplane"))
    assert mounts == {"/etc/callroute/tls": "callroute-controlplane-tls",
                      "/etc/callroute/tokens": "callroute-operator-tokens"}
    # the rendered command line parses with the real parser, and the settings it names load
    p = argparse.ArgumentParser()
    add_controlplane_parser(p.add_subparsers())
    parsed = p.parse_args(args)
    assert parsed.tls_key == "/etc/callroute/tls/tls.key" and parsed.insecure is None
    cfg = yaml.safe_load(find(default_docs, "ConfigMap", "cr-callroute-controlplane-config")["data"]
                         ["controlplane.yaml"])
    assert cfg["require_two_person"] is True
    assert flags["--config"] == "/etc/callroute/config/controlplane.yaml"


def test_each_center_has_its_own_certificate_mounted_in_its_agent(default_docs: list) -> None:
    from agents.main import add_agent_parser

    for center in CENTERS:
        cert = find(default_docs, "Certificate", f"cr-callroute-agent-{center}")
        assert cert["spec"]["uris"] == [f"spiffe://callroute/center/{center}"]
        secret = cert["spec"]["secretName"]
        assert secret == f"callroute-agent-tls-{center}"
        dep = find(default_docs, "Deployment", f"cr-callroute-agent-{center}")
        assert mounted_secrets(dep) == {"/etc/callroute/tls": secret}
        args = container(dep)["args"]
        flags = flag_values(args)
        assert flags["--center"] == center and flags["--tls-cert"] == "/etc/callroute/tls/tls.crt"
        assert flags["--tls-ca"] and flags["--tls-key"] and "--insecure" not in args
        # redirected to the leader's pod IP, the agent still verifies a name the certificate has
        cp_names = find(default_docs, "Certificate", "cr-callroute-controlplane")["spec"]["dnsNames"]
        assert flags["--tls-server-name"] in cp_names
        assert flags["--controlplane"].rpartition(":")[0] in cp_names
        p = argparse.ArgumentParser()
        add_agent_parser(p.add_subparsers())
        assert p.parse_args(args).tls_cert == "/etc/callroute/tls/tls.crt"
    # agents hold no etcd credential: no etcd flag, no etcd secret
    agents = [d for d in default_docs if d["kind"] == "Deployment" and "-agent-" in d["metadata"]["name"]]
    assert len(agents) == len(CENTERS)
    for dep in agents:
        assert not any("etcd" in a for a in container(dep)["args"])
        assert not any("etcd" in s for s in mounted_secrets(dep).values())


def test_etcd_runs_with_tls_client_certs_and_the_auth_job(default_docs: list) -> None:
    cmd = container(find(default_docs, "StatefulSet", "cr-callroute-etcd"))["command"]
    assert "--client-cert-auth=true" in cmd and "--peer-client-cert-auth=true" in cmd
    assert all(u.split("=", 1)[1].startswith("https://") for u in cmd if u.startswith("--listen-"))
    job = find(default_docs, "Job", "cr-callroute-etcd-auth")
    env = {e["name"]: e["value"] for e in container(job)["env"]}
    assert env["CALLROUTE_CP_USER"] == "callroute-controlplane" and env["CALLROUTE_PREFIX"] == "/callroute/"
    assert env["ETCDCTL_ENDPOINTS"].startswith("https://cr-callroute-etcd-0.")
    assert mounted_secrets(job) == {"/etc/etcd/root": "callroute-etcd-root-tls"}
    # the Job runs the very script tests/test_deploy_etcd.py runs against a real etcd
    script = find(default_docs, "ConfigMap", "cr-callroute-etcd-auth")["data"]["etcd-auth.sh"]
    assert script.strip() == (CHART / "files" / "etcd-auth.sh").read_text().strip()
    cp_cert = find(default_docs, "Certificate", "cr-callroute-controlplane")
    assert cp_cert["spec"]["commonName"] == env["CALLROUTE_CP_USER"]


def test_switch_port_only_from_switch_cidrs_and_acd_port_not_exposed(default_docs: list) -> None:
    pol = find(default_docs, "NetworkPolicy", "cr-callroute-agents")
    # no switchCIDRs listed: nothing reaches the lookup ports but monitoring on the HTTP port
    assert [r["ports"] for r in pol["spec"]["ingress"]] == [[{"port": 8080}]]
    assert all("namespaceSelector" in f for f in pol["spec"]["ingress"][0]["from"])
    for center in CENTERS:
        dep = find(default_docs, "Deployment", f"cr-callroute-agent-{center}")
        assert {p["name"] for p in container(dep)["ports"]} == {"http", "grpc"}
        assert "--acd-listen" not in container(dep)["args"]  # default: loopback inside the pod
        svc = find(default_docs, "Service", f"cr-callroute-agent-{center}")
        assert {p["name"] for p in svc["spec"]["ports"]} == {"http", "grpc"}

    docs = render({"networkPolicy": {"switchCIDRs": ["10.20.0.0/16"]}})
    ingress = find(docs, "NetworkPolicy", "cr-callroute-agents")["spec"]["ingress"]
    assert ingress[0] == {"ports": [{"port": 8080}, {"port": 8081}],
                          "from": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}


def test_acd_listener_when_configured_has_tls_token_and_its_own_sources() -> None:
    docs = render({"agents": {"acdListener": {"port": 9443, "tokenSecret": "acd-token",
                                              "sourceCIDRs": ["10.30.0.5/32"]}}})
    dep = find(docs, "Deployment", "cr-callroute-agent-north")
    flags = flag_values(container(dep)["args"])
    assert flags["--acd-listen"] == "0.0.0.0:9443" and flags["--acd-tls-cert"] == "/etc/callroute/tls/tls.crt"
    assert flags["--acd-token-file"] == "/etc/callroute/acd/token"
    assert mounted_secrets(dep)["/etc/callroute/acd"] == "acd-token"
    ingress = find(docs, "NetworkPolicy", "cr-callroute-agents")["spec"]["ingress"]
    # from the ACD's own addresses, and from the other agents: their probes (issue 16)
    assert {"ports": [{"port": 9443}], "from": [
        {"ipBlock": {"cidr": "10.30.0.5/32"}},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "cr",
                                         "app.kubernetes.io/component": "agent"}}}]} in ingress
    args = container(dep)["args"]
    peers = [args[i + 1] for i, a in enumerate(args) if a == "--peer"]
    assert peers and all(p.endswith(".svc:9443") and not p.startswith("north=") for p in peers)
    # a port without a token Secret or without sources does not render
    for bad in ({"port": 9443, "sourceCIDRs": ["10.30.0.5/32"]}, {"port": 9443, "tokenSecret": "t"}):
        with pytest.raises(helm.HelmError):
            render({"agents": {"acdListener": bad}})


def test_insecure_must_be_asked_for() -> None:
    with pytest.raises(helm.HelmError) as e:
        render({"tls": {"enabled": False}, "auth": {"enabled": False}})
    assert "insecure" in str(e.value)
    docs = render({"tls": {"enabled": False}, "auth": {"enabled": False}, "insecure": True})
    assert "--insecure" in container(find(docs, "Deployment", "cr-callroute-controlplane"))["args"]
    assert "--insecure" in container(find(docs, "Deployment", "cr-callroute-agent-west"))["args"]
    assert not any(d["kind"] == "Job" for d in docs)  # no etcd auth to set up


def test_console_is_off_by_default_and_renders_with_https_mtls_and_no_token_of_its_own(default_docs):
    assert not [d for d in default_docs if d["metadata"]["name"].endswith("-console")]
    docs = render({"console": {"enabled": True, "dnsNames": ["console.bank.example"]}})
    dep = find(docs, "Deployment", "cr-callroute-console")
    args = container(dep)["args"]
    flags = flag_values(args)
    assert args[0] == "console" and flags["--endpoint"] == "cr-callroute-controlplane.cc.svc:7400"
    assert flags["--listen"] == "0.0.0.0:7480" and "--insecure" not in flags
    # HTTPS for browsers and mTLS to the control plane, from the console's own certificate
    assert flags["--tls-cert"] == flags["--cert"] == "/etc/callroute/tls/tls.crt"
    assert flags["--tls-key"] == flags["--key"] == "/etc/callroute/tls/tls.key"
    assert flags["--ca"] == "/etc/callroute/tls/ca.crt"
    assert mounted_secrets(dep) == {"/etc/callroute/tls": "callroute-console-tls"}
    assert "--token" not in flags  # operators log in with their own tokens
    cert = find(docs, "Certificate", "cr-callroute-console")
    assert cert["spec"]["secretName"] == "callroute-console-tls"
    assert cert["spec"]["dnsNames"] == ["cr-callroute-console", "cr-callroute-console.cc.svc",
                                        "console.bank.example"]
    assert cert["spec"]["uris"] == ["spiffe://callroute/operator/console"]
    svc = find(docs, "Service", "cr-callroute-console")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "https", "port": 7480, "targetPort": "https"}]
    assert container(dep)["securityContext"]["readOnlyRootFilesystem"] is True


def test_console_without_tls_only_when_insecure_is_asked_for():
    lab = {"insecure": True, "tls": {"enabled": False}, "auth": {"enabled": False},
           "console": {"enabled": True}}
    dep = find(render(lab), "Deployment", "cr-callroute-console")
    flags = flag_values(container(dep)["args"])
    assert "--insecure" in flags and "--tls-cert" not in flags
    assert "volumes" not in dep["spec"]["template"]["spec"]
    with pytest.raises(Exception, match="tls.enabled and auth.enabled are required"):
        render({"tls": {"enabled": False}, "auth": {"enabled": False}, "console": {"enabled": True}})
    with pytest.raises(Exception, match="console"):
        render({"console": {"enabled": True, "port": 0}})
