"""Checks of the static operations files: Prometheus rules, Grafana dashboards, Helm chart, Dockerfile.

What is checked: promtool accepts the rules, the scrape config and every dashboard query, and the
rule unit tests pass (skipped only without promtool); every metric and label the rules and dashboards
use is exported by the services (read from their registries, not from a list kept here); the chart's
values validate against its schema; every `.Values` path a template uses exists; the chart's copies
of rules, dashboards and topology equal their sources; the command lines in the templates use only
flags the CLI parsers define; the Dockerfile copies files that exist. Must not: start servers, reach
a network, or need helm (it cannot be installed here; see helm/callroute/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
CHART = ROOT / "helm" / "callroute"
PROMTOOL = shutil.which("promtool")
need_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; scripts/bootstrap.sh installs it)",
)
# promtool checks a few small files; much longer means something hangs
PROMTOOL_TIMEOUT_S = 60
# labels Prometheus adds to every scraped series (static configs and the chart's ServiceMonitor)
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# series no callroute service exports but every Prometheus has
PROMETHEUS_BUILTINS = {"up"}


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=PROMTOOL_TIMEOUT_S)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(PROM / "rules.yml")["groups"] for r in g["rules"]]


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel query and every templating query."""
    out = []
    for name, d in dashboards().items():
        for p in d["panels"]:
            for t in p.get("targets", []):
                out.append((f"{name}: {p['title']}", t["expr"]))
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                out.append((f"{name}: ${v['name']}", v["definition"]))
    return out


def substitute_variables(expr: str) -> str:
    """Grafana variables -> a value, so promtool can parse the query; label_values() -> its metric."""
    m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", expr)
    if m:
        return m.group(1)
    return re.sub(r"\$\{?\w+\}?", "x", expr)


# ---------------------------------------------------------------- what the services export


def exported_metrics() -> dict[str, set[str]]:
    """Every sample name the control plane and an agent expose, with its label names."""
    from prometheus_client.metrics import MetricWrapperBase
    from prometheus_client.parser import text_string_to_metric_families

    from agents.main import Agent
    from agents.settings import AgentSettings
    from controlplane.service.metrics import ControlPlaneMetrics

    out: dict[str, set[str]] = {}
    cp = ControlPlaneMetrics()
    for metric in vars(cp).values():
        # a labelled family shows no samples until it has a child; make one so the registry lists it
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    for fam in cp.registry.collect():
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)

    agent = Agent(AgentSettings(center="probe", acd="push"), None)
    for fam in text_string_to_metric_families(agent.metrics_text().decode()):
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def recorded_names() -> dict[str, set[str] | None]:
    """Recording rules' names; their labels are not tracked (None)."""
    return {r["record"]: None for r in rules() if "record" in r}


NAME_RE = re.compile(r"(?<![\w:$])(callroute[_:][A-Za-z0-9_:]*|up)\b(\{[^}]*\})?")
LABEL_RE = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def used_series(expr: str) -> list[tuple[str, list[str]]]:
    """(metric name, label names in its selector) for every callroute series and `up` in expr."""
    found = []
    for m in NAME_RE.finditer(expr):
        labels = LABEL_RE.findall(m.group(2) or "")
        found.append((m.group(1), labels))
    return found


def all_exprs() -> list[tuple[str, str]]:
    from_rules = [(f"rules.yml: {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()]
    return from_rules + dashboard_exprs()


def test_every_metric_and_label_used_is_exported() -> None:
    exported = exported_metrics()
    assert "callroute_controlplane_leader" in exported and "callroute_agent_plan_age_seconds" in exported
    recorded = recorded_names()
    problems = []
    used_any = set()
    for where, expr in all_exprs():
        series = used_series(expr)
        for name, labels in series:
            used_any.add(name)
            if name in PROMETHEUS_BUILTINS or name in recorded:
                continue
            if name not in exported:
                problems.append(f"{where}: {name} is not exported by any service")
                continue
            for label in labels:
                if label not in exported[name] and label not in TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {label!r} (has {sorted(exported[name])})")
    assert not problems, "\n".join(problems)
    # the parser must really see the queries: a regex that matches nothing passes vacuously
    assert {"callroute_agent_plan_age_seconds", "callroute_controlplane_plan_nacks_total",
            "callroute:center_status:leader"} <= used_any


def test_name_extraction_sees_selectors_and_skips_functions() -> None:
    got = used_series('sum by (c) (rate(callroute_agent_lookups_total{center="$center",result=~"a|b"}[5m]))'
                      ' * on (instance) group_left (center) callroute:agent_center:info')
    assert got == [("callroute_agent_lookups_total", ["center", "result"]),
                   ("callroute:agent_center:info", [])]


# ---------------------------------------------------------------- promtool


@need_promtool
def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", "rules.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@need_promtool
def test_promtool_unit_tests_pass() -> None:
    r = promtool("test", "rules", "rules_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@need_promtool
def test_scrape_config_for_callroute_up() -> None:
    r = promtool("check", "config", "scrape-up.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = load_yaml(PROM / "scrape-up.yml")
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
            for j in cfg["scrape_configs"]}
    assert jobs["callroute-controlplane"] == ["127.0.0.1:9100"]
    assert jobs["callroute-agent"] == [f"127.0.0.1:{p}" for p in range(9101, 9141)]


@need_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    doc = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:q{i}", "expr": substitute_variables(e)} for i, (_, e) in enumerate(exprs)]}]}
    (tmp_path / "dash.yml").write_text(yaml.safe_dump(doc))
    r = promtool("check", "rules", "dash.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    fired, quiet = set(), set()
    for t in load_yaml(PROM / "rules_test.yml")["tests"]:
        for a in t.get("alert_rule_test", []):
            (fired if a["exp_alerts"] else quiet).add(a["alertname"])
    assert alerts - fired == set(), "alerts never made to fire"
    assert alerts - quiet == set(), "alerts never checked quiet"
    assert len(alerts) >= 15


def test_rules_have_severity_and_summary() -> None:
    for r in rules():
        if "alert" in r:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


# ---------------------------------------------------------------- dashboards


def test_dashboards_are_well_formed() -> None:
    ds = dashboards()
    assert {"callroute-overview.json", "callroute-center.json", "callroute-routes.json",
            "callroute-drills.json"} <= set(ds)
    uids = [d["uid"] for d in ds.values()]
    assert len(set(uids)) == len(uids)
    for name, d in ds.items():
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids), name
        variables = {v["name"] for v in d["templating"]["list"]}
        for where, expr in dashboard_exprs():
            if where.startswith(name):
                for v in re.findall(r"\$\{?(\w+)", expr):
                    assert v in variables, f"{where}: ${v} is not a variable of the dashboard"
    center = {v["name"] for v in ds["callroute-center.json"]["templating"]["list"]}
    assert "center" in center


# ---------------------------------------------------------------- Helm chart

SCHEMA_KEYS = {"$schema", "title", "description", "type", "properties", "required",
               "additionalProperties", "items", "enum", "minimum", "maximum", "pattern", "minLength",
               "minItems", "maxItems", "default"}
TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool,
                         "integer": int, "number": (int, float)}


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The subset of JSON Schema that values.schema.json uses; unknown keywords are an error."""
    unknown = set(schema) - SCHEMA_KEYS
    if unknown:
        return [f"{path or '/'}: schema uses unsupported keywords {sorted(unknown)}"]
    where = path or "/"
    t = schema.get("type")
    if t is not None:
        ok = isinstance(value, TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
        if not ok:
            return [f"{where}: {value!r} is not of type {t}"]
    errs: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        errs.append(f"{where}: {value!r} is below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errs.append(f"{where}: {value!r} is above {schema['maximum']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        errs.append(f"{where}: {value!r} is shorter than {schema['minLength']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errs.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "minItems" in schema and len(value) < schema["minItems"]:
        errs.append(f"{where}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errs.append(f"{where}: more than {schema['maxItems']} items")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errs += validate(v, schema["items"], f"{path}/{i}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                errs.append(f"{where}: missing required {k!r}")
        for k, v in value.items():
            if k in props:
                errs += validate(v, props[k], f"{path}/{k}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{where}: unknown key {k!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += validate(v, schema["additionalProperties"], f"{path}/{k}")
    return errs


def chart_values() -> dict[str, Any]:
    return load_yaml(CHART / "values.yaml")


def chart_schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def test_values_validate_against_schema() -> None:
    assert validate(chart_values(), chart_schema()) == []


def test_schema_validator_rejects_bad_values() -> None:
    import copy

    schema = chart_schema()
    bad: list[tuple[str, Any, str]] = [
        ("tls.enabled", "yes", "not of type boolean"),
        ("controlplane.replicas", 0, "below 1"),
        ("controlplane.typo", 1, "unknown key 'typo'"),
        ("agents.acd", "kafka", "not one of"),
        ("etcd.replicas", 2, "not one of"),
        ("controlplane.grpcPort", True, "not of type integer"),
    ]
    for dotted, value, why in bad:
        v = copy.deepcopy(chart_values())
        *parents, last = dotted.split(".")
        node = v
        for p in parents:
            node = node[p]
        node[last] = value
        errs = validate(v, schema)
        assert any(why in e for e in errs), (dotted, errs)
    v = copy.deepcopy(chart_values())
    v["centers"] = [{"id": "Not_A_DNS_Name"}]
    assert any("does not match" in e for e in validate(v, schema))


def test_security_is_on_by_default() -> None:
    v = chart_values()
    assert v["tls"]["enabled"] is True and v["auth"]["enabled"] is True
    props = chart_schema()["properties"]
    assert props["tls"]["properties"]["enabled"]["default"] is True
    assert props["auth"]["properties"]["enabled"]["default"] is True
    assert v["controlplane"]["replicas"] == 2 and v["etcd"]["replicas"] == 3


def templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((CHART / "templates").iterdir())}


def test_every_values_path_in_templates_exists() -> None:
    values = chart_values()
    missing = []
    for name, text in templates().items():
        for path in re.findall(r"\.Values((?:\.[A-Za-z_]\w*)+)", text):
            node: Any = values
            for part in path.strip(".").split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{name}: .Values{path}")
                    break
                node = node[part]
    assert not missing, "\n".join(sorted(set(missing)))


def test_templates_delimiters_balance() -> None:
    for name, text in templates().items():
        # YAML flow mappings end in "}}" too, so look for actions that never close instead
        assert "{{" not in re.sub(r"\{\{.*?\}\}", "", text), f"{name}: an unclosed {{{{ action"
        opens = len(re.findall(r"\{\{-?\s*(?:if|range|with|define)\b", text))
        ends = len(re.findall(r"\{\{-?\s*end\b", text))
        assert opens == ends, f"{name}: {opens} blocks opened, {ends} ended"


def command_flags(text: str, subcommand: str) -> set[str]:
    """Flags in the `args:` list that starts with `- subcommand` in a template."""
    m = re.search(rf"args:\n(\s+)- {subcommand}\n((?:\1.*\n)+)", text)
    assert m, f"no args list for {subcommand}"
    return set(re.findall(r"^\s+- (--[a-z-]+)\s*$", m.group(2), re.M))


def test_template_command_lines_use_real_cli_flags() -> None:
    from agents.main import add_agent_parser
    from controlplane.cli.services import add_controlplane_parser

    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_controlplane_parser(sub)
    add_agent_parser(sub)
    real = {name: {o for a in sp._actions for o in a.option_strings} for name, sp in sub.choices.items()}
    t = templates()
    cp = command_flags(t["controlplane.yaml"], "controlplane")
    agent = command_flags(t["agents.yaml"], "agent")
    assert {"--topology", "--store", "--listen", "--metrics"} <= cp <= real["controlplane"]
    want = {"--center", "--controlplane", "--http", "--grpc", "--acd", "--state-dir"}
    assert want <= agent <= real["agent"]


def test_chart_copies_equal_their_sources() -> None:
    assert (CHART / "files" / "rules.yml").read_bytes() == (PROM / "rules.yml").read_bytes()
    copies = sorted(p.name for p in (CHART / "files" / "dashboards").glob("*.json"))
    assert copies == sorted(dashboards())
    for n in copies:
        assert (CHART / "files" / "dashboards" / n).read_bytes() == (DASHBOARDS / n).read_bytes(), n
    assert (CHART / "files" / "topology.yaml").read_bytes() == (ROOT / "examples" / "small.yaml").read_bytes()


def test_default_centers_are_the_topology_centers() -> None:
    from controlplane.core.topology import load_topology

    topo = load_topology(CHART / "files" / "topology.yaml")
    assert [c["id"] for c in chart_values()["centers"]] == sorted(topo.center_ids())


def test_static_yaml_parses() -> None:
    for p in [PROM / "rules.yml", PROM / "rules_test.yml", PROM / "scrape-up.yml", CHART / "Chart.yaml",
              CHART / "values.yaml", *sorted((ROOT / "deploy" / "grafana" / "provisioning").glob("*.yml"))]:
        assert isinstance(load_yaml(p), dict), p
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2" and chart["name"] == "callroute"


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_copies_existing_files_and_runs_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    copies = [ln.split()[1:-1] for ln in lines if ln.startswith("COPY ")]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    # every package pyproject installs is in the image
    copied = {s for srcs in copies for s in srcs}
    assert {"pyproject.toml", "controlplane", "agents", "chaos", "callroute", "bench"} <= copied
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    assert 'ENTRYPOINT ["callroute"]' in lines
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not copied & set(ignored), "the Dockerfile copies something .dockerignore leaves out"
