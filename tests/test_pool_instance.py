"""What an instance is launched with (env, command), and the logs children append to."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from swarm_pool.config import Config
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.instance import (
    build_instance_env,
    log_tail,
    model_program,
    opencode_program,
    rotate_log,
)


def test_instance_env(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path).ensure()
    base = {
        "PATH": "/usr/bin",
        "XDG_DATA_HOME": "/home/u/.local/share",
        "ANTHROPIC_API_KEY": "k",
        "OPENCODE_SERVER_USERNAME": "someone",
        "OPENCODE_DB": "/shared.db",
    }
    env = build_instance_env(
        Config(),
        paths=paths,
        name="oc-1",
        password="pw",
        model_url="http://127.0.0.1:47001/v1",
        base_env=base,
    )
    inst_dir = paths.instance_dir("oc-1")
    assert inst_dir.is_dir()  # opencode cannot create its DB's folder itself
    assert env["OPENCODE_DB"] == str(inst_dir / "opencode.db")
    assert env["OPENCODE_SERVER_PASSWORD"] == "pw"
    assert "OPENCODE_SERVER_USERNAME" not in env  # Basic auth user stays "opencode"
    assert env["SWARM_POOL_PROJECT"] == str(tmp_path)
    assert env["OPENCODE_DISABLE_MODELS_FETCH"] == "1"
    # The user's credentials keep working: their data dir and keys are untouched.
    assert env["XDG_DATA_HOME"] == "/home/u/.local/share"
    assert env["ANTHROPIC_API_KEY"] == "k"
    oc_config = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    assert "127.0.0.1:47001" in json.dumps(oc_config["provider"])


def test_models_fetch_can_be_enabled(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path).ensure()
    config = Config.model_validate(
        {"opencode": {"disable_models_fetch": False, "model": "anthropic/claude"}}
    )
    env = build_instance_env(
        config,
        paths=paths,
        name="oc-2",
        password="pw",
        model_url=None,
        base_env={"OPENCODE_DISABLE_MODELS_FETCH": "1"},
    )
    assert "OPENCODE_DISABLE_MODELS_FETCH" not in env


def test_programs(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path)
    config = Config.model_validate({"model": {"scripts": "s.toml", "default_delay_s": 0.5}})
    prog = opencode_program(
        "oc-3",
        config=config,
        paths=paths,
        binary=Path("/x/opencode"),
        password="pw",
        model_url=lambda: None,
    )
    assert prog.command(47005) == [
        "/x/opencode",
        "serve",
        "--hostname",
        "127.0.0.1",
        "--port",
        "47005",
    ]
    assert prog.url(47005) == "http://127.0.0.1:47005"
    assert prog.log_path == paths.instance_dir("oc-3") / "opencode.log"
    model = model_program(config, paths)
    argv = model.command(47006)
    assert argv[:4] == [sys.executable, "-m", "swarm_pool.scripted_model", "serve"]
    assert argv[argv.index("--port") + 1] == "47006"
    assert argv[argv.index("--scripts") + 1] == str(tmp_path / "s.toml")
    assert argv[argv.index("--delay") + 1] == "0.5"
    assert model.kind == "model" and model.url(47006) == "http://127.0.0.1:47006/v1"


def test_rotate_by_rename_before_launch(tmp_path: Path) -> None:
    log = tmp_path / "opencode.log"
    log.write_text("x" * 2000)
    assert not rotate_log(log, max_bytes=4096, backups=2, copy_truncate=False)
    for i in range(3):
        log.write_text(f"run {i} " + "x" * 5000)
        assert rotate_log(log, max_bytes=4096, backups=2, copy_truncate=False)
    assert not log.exists()
    assert (tmp_path / "opencode.log.1").read_text().startswith("run 2")
    assert (tmp_path / "opencode.log.2").read_text().startswith("run 1")
    assert not (tmp_path / "opencode.log.3").exists()


def test_copy_truncate_keeps_the_writers_file(tmp_path: Path) -> None:
    log = tmp_path / "opencode.log"
    # A running child holds an O_APPEND descriptor; after the rotation its writes must
    # land at the start of the same, now empty, file.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"old " * 2000)
        assert rotate_log(log, max_bytes=1024, backups=1, copy_truncate=True)
        os.write(fd, b"new line\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"new line\n"
    assert (tmp_path / "opencode.log.1").read_bytes().startswith(b"old old")


def test_log_tail_strips_colours(tmp_path: Path) -> None:
    log = tmp_path / "l"
    log.write_text("listening\n\x1b[91m\x1b[1mError: \x1b[0mUnexpected error\n\nServeError\n\n")
    assert log_tail(log) == "ServeError"
    assert log_tail(tmp_path / "missing") == ""
