"""Settings from flags and STUDIO_* environment variables."""

import pytest

from studio.config import Settings, api_keys


def test_ui_logins_parse_from_the_flag_and_the_environment(monkeypatch):
    settings = Settings.from_args(["--ui-auth", "ann:se:cret, bob:x"])
    assert settings.ui_auth == [("ann", "se:cret"), ("bob", "x")]  # only the first colon splits
    assert Settings.from_args([]).ui_auth == []
    monkeypatch.setenv("STUDIO_UI_AUTH", "cy:pw")
    assert Settings.from_args([]).ui_auth == [("cy", "pw")]


@pytest.mark.parametrize("value", ["just-a-password", "ann:", ":pw", "ann:pw,bob"])
def test_a_bad_login_names_its_place_and_never_echoes_it(value, capsys):
    with pytest.raises(SystemExit) as exited:
        Settings.from_args(["--ui-auth", value])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--ui-auth" in error and "must be USER:PASSWORD" in error
    assert value.split(",")[-1] not in error  # the entry itself is not printed: it may be a password


def test_the_backend_flags_and_their_environment(monkeypatch):
    local = Settings.from_args([])
    assert (local.backend, local.ray_address, local.replicas) == ("local", None, None)
    ray = Settings.from_args(["--backend", "ray", "--ray-address", "ray://head:10001", "--min-replicas", "1",
                              "--max-replicas", "4"])
    assert (ray.backend, ray.ray_address, ray.min_replicas, ray.max_replicas) == ("ray", "ray://head:10001", 1, 4)
    monkeypatch.setenv("STUDIO_BACKEND", "ray")
    monkeypatch.setenv("STUDIO_RAY_ADDRESS", "auto")
    monkeypatch.setenv("STUDIO_REPLICAS", "3")
    from_env = Settings.from_args([])
    assert (from_env.backend, from_env.ray_address, from_env.replicas) == ("ray", "auto", 3)


@pytest.mark.parametrize("argv, message", [
    (["--backend", "slurm"], "invalid choice: 'slurm'"),
    (["--replicas", "0"], "--replicas: must be at least 1, not 0"),
    (["--max-replicas", "many"], "--max-replicas: must be a whole number of at least 1, not 'many'"),
])
def test_bad_backend_flags_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit):
        Settings.from_args(argv)
    assert message in capsys.readouterr().err


def test_api_keys_are_one_plain_key_or_named(monkeypatch):
    assert api_keys(Settings.from_args(["--api-key", "plain-key"]).api_key) == {"plain-key": None}
    named = Settings.from_args(["--api-key", "ci:k1, ann:k:2"]).api_key
    assert api_keys(named) == {"k1": "ci", "k:2": "ann"}  # only the first colon splits
    monkeypatch.setenv("STUDIO_API_KEY", "ops:k3")
    assert api_keys(Settings.from_args([]).api_key) == {"k3": "ops"}


@pytest.mark.parametrize("value", ["ci:k1,bare", "ci:", "ci:k1,ann:k1"])
def test_a_bad_named_key_list_is_refused_without_echoing_keys(value, capsys):
    with pytest.raises(SystemExit):
        Settings.from_args(["--api-key", value])
    error = capsys.readouterr().err
    assert "--api-key" in error and "k1" not in error and "bare" not in error


def test_an_admin_must_be_a_login(capsys):
    assert Settings.from_args(["--ui-auth", "ann:a,bob:b", "--ui-admin", "bob"]).ui_admins == ["bob"]
    with pytest.raises(SystemExit):
        Settings.from_args(["--ui-auth", "ann:a", "--ui-admin", "zed"])
    assert "--ui-admin zed: not a login" in capsys.readouterr().err


def test_a_login_without_an_api_key_warns_that_rest_is_open(tiny_models, caplog):
    from studio.server import create_app

    create_app(Settings(devices=["cpu"], models_dir=tiny_models("sdxl-turbo"), ui_auth=[("ann", "pw")]))
    assert "REST API (/v1) is open to anyone" in caplog.text


def test_the_memory_flags_and_their_environment(monkeypatch, capsys):
    default = Settings.from_args([])
    assert (default.memory_plan, default.gpu_memory_gb) == ("auto", None)
    flagged = Settings.from_args(["--memory-plan", "fp8", "--gpu-memory-gb", "16"])
    assert (flagged.memory_plan, flagged.gpu_memory_gb) == ("fp8", 16.0)
    monkeypatch.setenv("STUDIO_MEMORY_PLAN", "group-offload")
    monkeypatch.setenv("STUDIO_GPU_MEMORY_GB", "24")
    from_env = Settings.from_args([])
    assert (from_env.memory_plan, from_env.gpu_memory_gb) == ("group-offload", 24.0)
    monkeypatch.setenv("STUDIO_MEMORY_PLAN", "lowvram")
    with pytest.raises(SystemExit):
        Settings.from_args([])
    assert "--memory-plan: 'lowvram' is not one of auto, full, offload-encoders, fp8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        Settings.from_args(["--gpu-memory-gb", "-1"])
