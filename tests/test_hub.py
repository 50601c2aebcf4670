"""Downloads: the plan of each model, ``python -m studio pull`` / ``models``, faults, against a local hub.

The tiny models are served under their real repo ids by ``tests/hubserver.py``; huggingface_hub
runs its real download code against it (``HF_ENDPOINT``), into a temporary ``HF_HOME``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hubserver import hub_repos, serve_hub, use_hub

from studio import cli, hub
from studio.catalog import load_catalog
from studio.schemas import parse_request

ROOT = Path(__file__).resolve().parent.parent
SERVED = ("sdxl-turbo", "pixart-sigma", "stable-cascade")


@pytest.fixture(scope="module")
def served(tiny_models):
    return hub_repos(tiny_models(*SERVED), SERVED)


@pytest.fixture
def hubserver(served):
    with serve_hub(served) as server:
        yield server


@pytest.fixture
def online(hubserver, tmp_path, monkeypatch):
    """This process talks to the test hub, with an empty cache (conftest makes tests offline)."""
    use_hub(monkeypatch, hubserver, tmp_path / "hf", environment=False)
    return hubserver


def hub_env(hubserver, tmp_path, **extra) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=hubserver.url, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT), **extra)
    env.pop("HF_HUB_CACHE", None)
    return env


def studio_cli(*args, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_the_plan_holds_what_from_pretrained_reads_and_nothing_else(online):
    catalog = load_catalog()
    turbo = hub.plan_model(catalog.get("sdxl-turbo")).repos[0].files
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in turbo  # the catalog's variant
    assert {"model_index.json", "tokenizer_2/tokenizer.json", "scheduler/scheduler_config.json"} <= set(turbo)
    assert not {"sd_xl_turbo_1.0_fp16.safetensors", "unet/diffusion_pytorch_model.bin", "studio.toml"} & set(turbo)
    assert turbo["unet/diffusion_pytorch_model.fp16.safetensors"] == len(
        online.repos["stabilityai/sdxl-turbo"].files["unet/diffusion_pytorch_model.fp16.safetensors"].data
    )

    prior, decoder = hub.plan_model(catalog.get("stable-cascade")).repos
    assert prior.load.repo == "stabilityai/stable-cascade-prior" and "prior/config.json" in prior.files
    assert not [path for path in prior.files if path.startswith(("image_encoder/", "feature_extractor/"))]
    assert {path.split("/")[0] for path in decoder.files} == {"model_index.json", "decoder", "scheduler", "vqgan"}


@pytest.mark.parametrize("model_id", ["sdxl-turbo", "stable-cascade"])
def test_a_pulled_model_loads_offline_with_the_real_loader(online, model_id, monkeypatch):
    """The plan is complete exactly when diffusers finds every file it wants in the cache, offline."""
    from huggingface_hub import constants

    spec = load_catalog().get(model_id)
    assert cli.main(["pull", model_id]) == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from studio.engine import Engine

    size = spec.limits.min_side if not spec.limits.allowed_sizes else None
    request = parse_request({"prompt": "a red fox", "model": model_id, "width": size, "height": size, "steps": 1})
    spec, request = load_catalog().resolve(request)
    result = Engine("cpu").run(spec, request, on_step=lambda step, total: None)
    assert len(result.images) == 1 and result.images[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_pull_shows_progress_and_models_tells_what_is_on_disk(hubserver, tmp_path):
    env = hub_env(hubserver, tmp_path)
    hubserver.throttle_bps = 1_000_000  # about 1.5 s for sdxl-turbo: the bar has something to show
    done = studio_cli("pull", "sdxl-turbo", env=env)
    assert done.returncode == 0, done.stderr
    assert "sdxl-turbo: on disk" in done.stdout
    assert "Downloading SDXL Turbo:" in done.stderr and " of 1.5 MB" in done.stderr

    listing = studio_cli("models", env=env)
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert lines["sdxl-turbo"].endswith("on disk, 1.5 MB")
    assert "not on disk, download" in lines["pixart-sigma"]
    # The sizes are the files' own: on disk after the pull, the hub's listing before one, else the catalog's.
    assert "(files on disk)" in lines["sdxl-turbo"] and "weights 0 GB bf16" in lines["sdxl-turbo"]
    assert "(hub file sizes)" in lines["pixart-sigma"] and "(catalog estimate)" in lines["flux-dev"]
    assert "does not exist on the hub" in listing.stderr  # the models this hub lacks say why they have no size

    fetched = len(hubserver.downloads())
    again = studio_cli("pull", "sdxl-turbo", env=env)
    assert again.returncode == 0 and "sdxl-turbo: on disk" in again.stdout
    assert len(hubserver.downloads()) == fetched  # nothing fetched twice


def test_pull_all_fetches_every_model_the_hub_serves(online, capsys):
    code = cli.main(["pull", "--all"])
    out, err = capsys.readouterr()
    for model_id in SERVED:
        assert f"{model_id}: on disk" in out
    assert code == 2  # this hub serves three of the fifteen: each other one is one line of error
    assert err.count("error: ") == len(load_catalog()) - len(SERVED)
    assert "error: flux-schnell: FLUX.1 [schnell]: the repo black-forest-labs/FLUX.1-schnell does not exist" in err


def test_a_dropped_connection_is_resumed(online):
    path = "unet/diffusion_pytorch_model.fp16.safetensors"
    online.drop_after[path] = 300_000
    assert cli.main(["pull", "sdxl-turbo"]) == 0
    assert online.downloads().count(path) == 2
    served = online.repos["stabilityai/sdxl-turbo"].files[path].data
    cached = next((hub.cache_dir() / "models--stabilityai--sdxl-turbo" / "snapshots").glob(f"*/{path}"))
    assert hashlib.sha256(cached.read_bytes()).digest() == hashlib.sha256(served).digest()


def test_an_interrupted_pull_goes_on_where_it_stopped(hubserver, tmp_path):
    env = hub_env(hubserver, tmp_path)
    hubserver.throttle_bps = 150_000  # per connection: about 7 s for the largest file
    process = subprocess.Popen([sys.executable, "-m", "studio", "pull", "sdxl-turbo"], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    snapshots = tmp_path / "hf" / "hub" / "models--stabilityai--sdxl-turbo" / "snapshots"
    deadline = time.monotonic() + 60
    while not list(snapshots.glob("*/*/*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted; finished files stay in the cache" in err
    finished = {p.relative_to(next(snapshots.iterdir())).as_posix() for p in snapshots.glob("*/**/*") if p.is_file()}
    assert finished

    hubserver.throttle_bps = None
    first_run = len(hubserver.requests)
    done = studio_cli("pull", "sdxl-turbo", env=env)
    assert done.returncode == 0, done.stderr
    fetched_again = {path for method, _, path, _ in hubserver.requests[first_run:] if method == "GET-file"}
    assert fetched_again and not fetched_again & finished


def test_not_enough_disk_names_both_numbers_and_downloads_nothing(online, monkeypatch, capsys):
    monkeypatch.setattr(hub, "free_bytes", lambda path: 200_000)
    assert cli.main(["pull", "sdxl-turbo"]) == 2
    err = capsys.readouterr().err
    assert "not enough disk space for sdxl-turbo: the download needs 1.5 MB" in err
    assert "has 200.0 kB free" in err
    assert online.downloads() == ["model_index.json"]  # planning reads the index; no weights came


def test_a_gated_repo_says_where_to_accept_the_license(online, capsys):
    online.gated.add("stabilityai/sdxl-turbo")
    assert cli.main(["pull", "sdxl-turbo"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "gated model: open https://huggingface.co/stabilityai/sdxl-turbo" in err
    assert "accept its license" in err and "HF_TOKEN" in err


def test_a_missing_repo_says_so(online, capsys):
    online.missing.add("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS")
    assert cli.main(["pull", "pixart"]) == 2
    assert "the repo PixArt-alpha/PixArt-Sigma-XL-2-1024-MS does not exist on the hub" in capsys.readouterr().err


def test_offline_a_model_not_on_disk_names_the_pull_command(capsys, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert constants.HF_HUB_OFFLINE  # conftest
    assert cli.main(["pull", "sdxl-turbo"]) == 2
    err = capsys.readouterr().err
    assert "SDXL Turbo is not on disk and the studio is offline" in err
    assert "python -m studio pull sdxl-turbo" in err


def test_generate_downloads_a_missing_model_first_with_its_progress(online, tmp_path, capsys):
    args = ["generate", "--model", "pixart", "--prompt", "a red fox", "--size", "256x256", "--steps", "1"]
    assert cli.main(args + ["-o", str(tmp_path / "fox.png")]) == 0
    out, err = capsys.readouterr()
    assert "pixart-sigma: on disk" in out and (tmp_path / "fox.png").stat().st_size > 0
    assert "Downloading PixArt-Sigma: " in err


def test_a_load_without_hub_or_files_says_what_to_do(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty, and offline (conftest)
    args = ["generate", "--model", "sdxl-turbo", "--prompt", "a red fox", "-o", str(tmp_path / "fox.png")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any library warnings
    assert err == (
        "error: SDXL Turbo is not on disk and the studio is offline: run `python -m studio pull sdxl-turbo` "
        "where the hub is reachable, or point --models-dir at a folder that holds sdxl-turbo/"
    )
