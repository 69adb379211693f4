"""The settings home: one definition per name, read at start-up, documented from the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from inference_graph.settings import (
    ENV_NAMES,
    FIXED,
    SET_NOT_READ,
    ConfigError,
    Env,
    OperatorSettings,
    RuntimeSettings,
    markdown,
)

ROOT = Path(__file__).parents[1]
HOME = ROOT / "services" / "inference_graph" / "environment.py"


def _sources():
    for top in ("services", "operator"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path != HOME:
                yield path, ast.parse(path.read_text())


def test_the_docs_table_is_the_one_the_code_generates():
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == markdown(), "run: python -m inference_graph.settings --markdown > docs/settings.md"


def test_every_name_is_read_by_one_settings_field_or_listed_as_set_only():
    read = RuntimeSettings.names() + OperatorSettings.names()
    assert len(set(ENV_NAMES)) == len(ENV_NAMES)
    assert set(read).isdisjoint(SET_NOT_READ)
    assert set(read) | set(SET_NOT_READ) == set(ENV_NAMES)


def test_no_name_port_or_time_is_spelt_outside_the_settings_home():
    """Each environment name and default port is a literal once, in environment.py."""
    names, ports = (
        set(ENV_NAMES),
        {FIXED.frontend_port, FIXED.nats_port, FIXED.etcd_port, FIXED.operator_health_port},
    )
    found = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and (
                node.value in names or (type(node.value) is int and node.value in ports)
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == []


def test_nothing_outside_the_settings_home_touches_os_environ():
    found = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                if isinstance(node.value, ast.Name) and node.value.id == "os":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_a_variable_set_after_import_is_seen(monkeypatch, tmp_path):
    # Import first, as a test module or a long-lived process would; then set the variables.
    from inference_graph.models import model_cache_dir
    from inference_graph.roles.worker import prefill, service  # noqa: F401 - read nothing at import
    from inference_graph.runtime import embedded

    monkeypatch.setenv(Env.IG_LOAD_INTERVAL, "0.25")
    monkeypatch.setenv(Env.IG_PREFILL_CONCURRENCY, "7")
    monkeypatch.setenv(Env.IG_MODEL_CACHE, str(tmp_path))
    monkeypatch.setenv(Env.IG_ETCD_BIN, "/opt/etcd")
    settings = RuntimeSettings.load()
    assert (settings.load_interval, settings.prefill_concurrency) == (0.25, 7)
    assert model_cache_dir() == tmp_path
    assert embedded.etcd_binary() == "/opt/etcd"
    monkeypatch.setenv(Env.IG_LOAD_INTERVAL, "2")
    assert RuntimeSettings.load().load_interval == 2.0


def test_empty_means_the_default_unless_empty_is_a_value():
    assert RuntimeSettings.load({Env.IG_LOG_LEVEL: "", Env.IG_LOAD_INTERVAL: " "}) == RuntimeSettings()
    chart = OperatorSettings.load({Env.IG_GPU_RESOURCE: "", Env.IG_RUNTIME_IMAGE: ""})
    assert chart.gpu_resource == "" and chart.runtime_image == OperatorSettings().runtime_image
    assert OperatorSettings.load({Env.IG_DEFAULT_ETCD_ENDPOINTS: ""}).default_etcd_endpoints == ()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        (Env.IG_METRICS_PORT, "http"),
        (Env.IG_METRICS_PORT, "70000"),
        (Env.IG_PREFILL_CONCURRENCY, "0"),
        (Env.IG_LOAD_INTERVAL, "soon"),
        (Env.IG_NIXL_PROGRESS_THREAD, "maybe"),
    ],
)
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(ConfigError, match=variable) as info:
        RuntimeSettings.load({variable: value})
    assert info.value.value == value


def test_resync_must_be_positive():
    with pytest.raises(ConfigError, match=Env.IG_RESYNC_SECONDS):
        OperatorSettings.load({Env.IG_RESYNC_SECONDS: "0"})
