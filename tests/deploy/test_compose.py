"""docker-compose.yml, the worker image and the Prometheus scrape config fit together."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONTRACT_MD = ROOT.parent / "shared" / "CONTRACT.md"

# CONTRACT §7, written out: a change there must be a deliberate change here.
SETTINGS = frozenset({
    "CHURNLIGHT_KAFKA",
    "CHURNLIGHT_KAFKA_SECURITY",
    "CHURNLIGHT_KAFKA_USER",
    "CHURNLIGHT_KAFKA_PASSWORD",
    "CHURNLIGHT_KAFKA_CA",
    "CHURNLIGHT_REDIS",
    "CHURNLIGHT_TOPIC_PREFIX",
    "CHURNLIGHT_PARTITIONS",
    "CHURNLIGHT_RULES",
    "CHURNLIGHT_TZ",
    "CHURNLIGHT_HOLDOUT_SALT",
    "CHURNLIGHT_WEB_PORT",
    "CHURNLIGHT_DATA_DIR",
})
WORKERS = ("worker-1", "worker-2")
INSTALL_HINT = "apt-get install -y docker-compose (Debian's Compose; `config` needs no Docker engine)"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _compose_command() -> list[str] | None:
    """Return the Compose CLI found here: the docker plugin, else the standalone binary."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _binds(service: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (source, target) of the service's bind mounts of repository paths."""
    binds = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            binds.append((source, target))
    return binds


def _named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Return target -> named volume of the service."""
    named = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            named[target] = source
    return named


def test_compose_cli_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail(f"no Compose CLI to validate docker-compose.yml; CI needs: {INSTALL_HINT}")
        pytest.skip(f"no Compose CLI here: {INSTALL_HINT}")
    # Our own PYTHONPATH must not leak into Debian's Python docker-compose.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        [*command, "--file", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_the_written_out_settings_match_contract_md() -> None:
    if not CONTRACT_MD.exists():
        pytest.skip(f"{CONTRACT_MD} not beside the repository")
    section = CONTRACT_MD.read_text(encoding="utf-8").split("## 7.", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"`(CHURNLIGHT_\w+)`", section)) == SETTINGS


def test_the_stack_has_its_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"kafka", "redis", "prometheus", "alertmanager", "grafana", *WORKERS}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_kafka_is_a_single_kraft_node_without_auto_topic_creation(
    services: dict[str, dict[str, Any]],
) -> None:
    env = _env(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "healthcheck" in services["kafka"]


def test_redis_appends_only(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "/data" in _named_volumes(services["redis"])
    assert "healthcheck" in services["redis"]


@pytest.mark.parametrize("name", WORKERS)
def test_worker_runs_against_the_compose_services(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    worker = services[name]
    assert worker["build"]["context"] == "."
    assert (ROOT / worker["build"]["dockerfile"]) == DOCKERFILE
    assert worker["command"] == ["churnlight", "worker"]
    env = _env(worker)
    # CONTRACT §4: the bind address is a setting (default loopback); a container must listen on all.
    assert set(env) <= SETTINGS | {"CHURNLIGHT_BIND"}, f"not a CONTRACT §7 setting: {set(env) - SETTINGS}"
    assert env["CHURNLIGHT_BIND"] == "0.0.0.0"
    assert env["CHURNLIGHT_KAFKA"] == "kafka:9092"
    assert env["CHURNLIGHT_REDIS"] == "redis://:${REDIS_PASSWORD}@redis:6379/0"
    assert env["CHURNLIGHT_WEB_PORT"] == "6066"
    assert env["CHURNLIGHT_DATA_DIR"] in _named_volumes(worker)
    health = " ".join(worker["healthcheck"]["test"])
    assert "http://localhost:6066/health" in health
    assert worker["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_workers_keep_their_state_apart(services: dict[str, dict[str, Any]]) -> None:
    volumes = [_named_volumes(services[w])[_env(services[w])["CHURNLIGHT_DATA_DIR"]] for w in WORKERS]
    assert len(set(volumes)) == len(WORKERS)
    hostnames = [services[w]["hostname"] for w in WORKERS]
    assert hostnames == list(WORKERS), "Faust routes requests to the owner by host name"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    used = {v for s in services.values() for v in _named_volumes(s).values()}
    assert used <= set(compose.get("volumes", {}))


def test_bind_mounts_point_at_files_in_the_repository(services: dict[str, dict[str, Any]]) -> None:
    binds = {(name, source): target for name, s in services.items() for source, target in _binds(s)}
    assert binds, "prometheus and grafana mount their configuration from deploy/"
    for (name, source), _ in binds.items():
        assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
    assert binds[("prometheus", "./deploy/prometheus")] == "/etc/prometheus"
    assert binds[("grafana", "./deploy/grafana/provisioning")] == "/etc/grafana/provisioning"
    assert binds[("grafana", "./deploy/grafana/dashboards")] == "/etc/grafana/dashboards"


def test_prometheus_reads_the_mounted_config(services: dict[str, dict[str, Any]]) -> None:
    flags = dict(arg.split("=", 1) for arg in services["prometheus"]["command"] if "=" in arg)
    assert flags["--config.file"] == "/etc/prometheus/prometheus.yml"
    assert (PROMETHEUS_DIR / "prometheus.yml").is_file()


def test_prometheus_config_scrapes_the_workers_and_loads_the_alerts(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    assert (PROMETHEUS_DIR / "alerts.yml").is_file()
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    ports = {_env(services[w])["CHURNLIGHT_WEB_PORT"] for w in WORKERS}
    assert targets == {f"{w}:{port}" for w in WORKERS for port in ports}


def test_grafana_serves_the_provisioned_dashboard(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    env = _env(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/etc/grafana/dashboards/")
    assert (ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert "healthcheck" in services["prometheus"]


def _dockerfile() -> list[tuple[str, str]]:
    """Return the Dockerfile's instructions as (keyword, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_installs_the_locked_dependencies_then_the_project_on_python_311_slim() -> None:
    instructions = _dockerfile()
    assert re.fullmatch(r"python:3\.11\.\d+-slim", instructions[0][1]) and instructions[0][0] == "FROM"
    runs = [args for k, args in instructions if k == "RUN"]
    locked = next(i for i, args in enumerate(runs) if "pip install --require-hashes -r requirements.lock" in args)
    project = next(i for i, args in enumerate(runs) if re.search(r"\bpip install --no-deps \.(\s|$)", args))
    assert locked < project
    assert ("COPY", "requirements.lock ./") in instructions
    assert instructions[-1] == ("CMD", '["churnlight", "worker"]')


def test_the_lock_files_pin_every_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.11,<3.14"
    for name, wanted in (("requirements.lock", project["dependencies"]),
                         ("requirements-dev.lock", project["dependencies"] + project["optional-dependencies"]["dev"])):
        text = (ROOT / name).read_text(encoding="utf-8")
        pins = dict(re.findall(r"^([a-z0-9._-]+)==(\S+)", text, flags=re.M))
        for requirement in wanted:
            # pyproject.toml names ranges, never an exact pin; the lock pins each of them.
            assert "==" not in requirement and "<" in requirement, requirement
            assert re.split(r"[<>=!~ ]", requirement)[0].lower() in pins, f"{name} lacks {requirement}"
        blocks = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2])
        assert all("--hash=sha256:" in block for block in blocks if "==" in block), name


def test_dockerfile_copies_what_pip_install_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "churnlight" in project["project"]["scripts"]
    copied = {
        source
        for keyword, args in _dockerfile()
        if keyword == "COPY"
        for source in args.split()[:-1]
        if not source.startswith("--")
    }
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", project["project"]["readme"], *packages}
    assert needed <= copied
    for source in copied:
        assert (ROOT / source).exists(), f"the image build copies {source}, which is not in the repository"


def test_dockerfile_sets_only_contract_settings() -> None:
    names = {
        name
        for keyword, args in _dockerfile()
        if keyword == "ENV"
        for name in re.findall(r"(CHURNLIGHT_\w+)=", args)
    }
    assert names <= SETTINGS


def test_images_are_pinned_to_a_patch_version(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+(-[a-z0-9.]+)?", image), f"{name}: {image} floats"


def test_published_ports_are_bound_to_this_host_only(services: dict[str, dict[str, Any]]) -> None:
    published = [(name, port) for name, s in services.items() for port in s.get("ports", [])]
    assert published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_credentials_come_from_the_documented_env_file(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(\w+)", text))
    documented = set(re.findall(r"^(\w+)=", ENV_EXAMPLE.read_text(encoding="utf-8"), flags=re.M))
    assert used == documented == {"REDIS_PASSWORD", "GRAFANA_ADMIN_USER", "GRAFANA_ADMIN_PASSWORD"}
    # A missing password stops `docker compose` instead of starting an open Redis or Grafana.
    assert "${REDIS_PASSWORD:?" in " ".join(services["redis"]["command"])
    assert _env(services["redis"])["REDISCLI_AUTH"] == "${REDIS_PASSWORD}"
    assert _env(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_compose_refuses_to_start_without_the_passwords(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip(f"no Compose CLI here: {INSTALL_HINT}")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD")}
    (tmp_path / "empty.env").write_text("GRAFANA_ADMIN_USER=admin\n")
    result = subprocess.run([*command, "--file", str(COMPOSE_FILE), "--env-file", str(tmp_path / "empty.env"),
                             "config", "--quiet"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr + result.stdout
