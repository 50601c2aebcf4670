"""The studio as a new user meets it: README's examples run as written on the tiny models, and the
terminal of ``python app.py`` shows a banner, one line per refused request, and no library noise.

One ``app.py`` process serves every test here (``tests.live.run_app``); the README's snippets are
taken from its fenced code blocks, with only the server's address swapped for the test's port.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from studio import cli, pngmeta
from studio.catalog import load_catalog
from tests.live import ROOT, run_app

README = ROOT / "README.md"
README_URL = "http://localhost:7860"
MODELS = ("sdxl-turbo", "flux-schnell", "sdxl-base")  # the README examples' models
CHROMIUM = "/usr/bin/chromium"
SNIPPET_TIMEOUT_S = 300  # a loaded 2-core machine: the CLI imports torch and makes 1024x768 images


def code_blocks(text: str) -> list[tuple[str, str, str]]:
    """``(section heading, language, code)`` of every fenced block of a Markdown text."""
    blocks, heading = [], ""
    for match in re.finditer(r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks.append((heading, match.group(2), match.group(3)))
    return blocks


def snippet(*, containing: str | None = None, section: str | None = None, language: str) -> str:
    """The one README block of ``language`` that contains ``containing`` / sits under ``section``."""
    found = [code for heading, lang, code in code_blocks(README.read_text())
             if lang == language and (containing is None or containing in code) and (section in (None, heading))]
    assert len(found) == 1, f"README should have one {language} block with {containing or section!r}, has {len(found)}"
    return found[0]


def shell_env(models_dir: Path) -> dict:
    """``python`` on PATH is this interpreter, the studio is importable, and its models are the tiny ones."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT), "STUDIO_MODELS_DIR": str(models_dir)}


def assert_image(path: Path, size: tuple[int, int]) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"{path.name} was not written"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == size


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models(*MODELS)


@pytest.fixture(scope="module")
def studio(models, tmp_path_factory):
    outputs, hub_cache = tmp_path_factory.mktemp("outputs"), tmp_path_factory.mktemp("hub-cache")
    args = ["--models-dir", str(models), "--devices", "cpu", "--outputs-dir", str(outputs)]
    with run_app(args, env={"HF_HUB_CACHE": str(hub_cache)}) as app:  # on disk: the models folder only
        yield app


def test_readme_curl_example_writes_the_image_and_fails_plainly(studio, models, tmp_path):
    code = snippet(containing="curl -s", section="REST API (OpenAI-compatible)", language="bash")
    code = code.replace(README_URL, studio.base_url)
    run = subprocess.run(["bash", "-c", code], cwd=tmp_path, env=shell_env(models), capture_output=True, text=True,
                         timeout=SNIPPET_TIMEOUT_S)
    assert run.returncode == 0, run.stderr
    assert_image(tmp_path / "fox.png", (512, 512))
    assert pngmeta.read(tmp_path / "fox.png")["seed"] == 42

    # A refused request: the message, a failed exit, and no empty fox.png left behind.
    (tmp_path / "fox.png").unlink()
    refused = code.replace('"size": "512x512"', '"size": "4096x4096"')
    run = subprocess.run(["bash", "-c", refused], cwd=tmp_path, env=shell_env(models), capture_output=True, text=True,
                         timeout=SNIPPET_TIMEOUT_S)
    assert run.returncode != 0
    assert "out of range for sdxl-turbo" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "fox.png").exists()


def test_readme_openai_sdk_example_writes_both_images(studio, tmp_path, monkeypatch, capsys):
    code = snippet(containing="from openai import OpenAI", language="python").replace(README_URL, studio.base_url)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (OpenAI SDK)", "exec"), {})
    for index, seed in enumerate((42, 43)):
        assert_image(tmp_path / f"lighthouse-{index}.png", (1024, 1024))
        assert pngmeta.read(tmp_path / f"lighthouse-{index}.png")["seed"] == seed
    assert capsys.readouterr().out.split() == ["42", "43"]


def test_readme_gradio_client_example_returns_pngs_and_the_catalog(studio, tmp_path, monkeypatch):
    code = snippet(containing="from gradio_client import Client", language="python").replace(README_URL, studio.base_url)
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 48), "teal").save(tmp_path / "in.png")  # the user's own picture of the /edit example
    names: dict = {}
    results = {}
    for statement in ast.parse(code).body:  # statement by statement, to look at each call's answer
        exec(compile(ast.Module([statement], type_ignores=[]), "README.md (gradio_client)", "exec"), names)
        call = getattr(statement, "value", None)
        api_name = next((k.value.value for k in getattr(call, "keywords", ()) if k.arg == "api_name"), None)
        results[api_name] = names.get("files"), names.get("params")
    files, params = results["/generate"]
    assert len(files) == 2 and params["seeds"] == [42, 43]
    for path in files:
        assert_image(Path(path), (64, 64))  # the tiny sdxl-base's default size
    assert pngmeta.read(files[1])["seed"] == 43
    assert pngmeta.read(files[1])["sampler"] == params["sampler"] == "DPM++ 2M Karras"
    (edited,), params = results["/edit"]
    assert_image(Path(edited), (64, 48))  # the input's size
    assert pngmeta.read(edited)["prompt"] == "as a watercolour"


def test_readme_command_line_example_writes_its_files(models, tmp_path, monkeypatch, capfd):
    # Each command of the block, run by the same main() as `python -m studio`, in this process (one torch import).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(models))
    for line in snippet(section="Command line", language="bash").replace("\\\n", " ").splitlines():
        command = shlex.split(line, comments=True)
        assert command[:3] == ["python", "-m", "studio"], line
        if command[3] == "pull":
            continue  # it needs the hub: tests/test_hub.py runs it against a local one
        assert cli.main(command[3:]) == 0, capfd.readouterr().err
    for name in ("fox-1.png", "fox-2.png"):
        assert_image(tmp_path / name, (1024, 768))
    assert_image(tmp_path / "painting.webp", (64, 64))
    painting = pngmeta.read(tmp_path / "painting.webp")
    assert (painting["negative_prompt"], painting["sampler"]) == ("blurry", "DPM++ 2M Karras")
    out, err = capfd.readouterr()
    assert "sdxl-base" in out and "flux-schnell" in out  # `models` lists the catalog
    # The command line's own progress, not the libraries' bars and warnings.
    assert "step 2/2" in err and "Loading" not in err and "Warning" not in err and "[transformers]" not in err


def test_start_up_banner_and_a_quiet_terminal(studio, models):
    httpx.post(f"{studio.base_url}/v1/images/generations", json={"model": "sdxl-turbo", "prompt": "a fox"},
               timeout=SNIPPET_TIMEOUT_S).raise_for_status()
    refused = httpx.post(f"{studio.base_url}/v1/images/generations",
                         json={"model": "sdxl-turbo", "prompt": "a fox", "steps": 9}, timeout=60)
    assert refused.status_code == 400
    from gradio_client import Client

    with pytest.raises(Exception, match="width: 2000 is out of range"):
        Client(studio.base_url + "/", verbose=False).predict(prompt="a fox", model="sdxl-turbo", width=2000,
                                                             api_name="/generate")

    output = studio.output()
    url = studio.base_url
    assert f"Image Studio is ready: {url}/" in output
    assert f"{url}/docs" in output
    assert re.search(r"^  devices +cpu$", output, flags=re.M)
    models_line = re.search(r"^  models on disk +(.*)$", output, flags=re.M).group(1)
    built = sorted(path.name for path in models.iterdir() if path.is_dir())  # other tests may build more
    others = len(load_catalog()) - len(built)
    listed = ", ".join(spec.id for spec in load_catalog() if spec.id in built)
    assert models_line.startswith(listed if others else "all")
    assert (f"the other {others} download" in models_line) if others else models_line == "all 15"
    # Each refusal in one line (the Gradio one without its traceback).
    assert "refused: steps: 9 is out of range for sdxl-turbo" in output
    assert "refused: width: 2000 is out of range for sdxl-turbo" in output
    assert "Traceback" not in output
    # Nothing else: no library warnings or progress bars, no access lines of the page's own traffic.
    assert re.search(r"^  memory plan +auto \(the first plan that fits each model and device\)$", output, flags=re.M)
    banner = ("Image Studio is ready", "  web UI", "  REST API", "  devices", "  models on disk", "  memory plan")
    noise = [line for line in output.splitlines() if line.strip() and not line.startswith(("INFO:", *banner))]
    assert not noise, "\n".join(noise)
    assert not re.search(r'"(GET|POST) /gradio_api/.*" 2\d\d', output)


def test_web_page_polls_quietly_and_its_api_page_requests_nothing_missing(studio):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors, failed = [], []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.on("response", lambda answer: answer.status >= 400 and failed.append(f"{answer.status} {answer.url}"))
        page.goto(studio.base_url + "/")
        page.wait_for_selector("#generate-button", timeout=60_000)
        with page.expect_response(lambda response: "/gradio_api/run/predict" in response.url, timeout=30_000):
            pass  # the slot status poll has run at least once
        page.get_by_text("Use via API").click()
        page.wait_for_selector("text=API documentation", timeout=30_000)
        page.wait_for_timeout(1000)
        browser.close()
    assert not failed and not errors, (failed, errors)
    assert "/gradio_api/run/predict" not in studio.output()


def test_a_missing_models_folder_stops_the_start_in_one_line(tmp_path):
    missing = tmp_path / "nope"
    run = subprocess.run([sys.executable, str(ROOT / "app.py"), "--models-dir", str(missing)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stdout == "" and len(run.stderr.splitlines()) == 1
    assert f"--models-dir {missing}: no such folder" in run.stderr

    assert cli.main(["generate", "--models-dir", str(missing), "--prompt", "a fox", "-o", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_the_banner_address_is_one_to_open_here():
    from studio.terminal import local_url

    assert local_url("0.0.0.0", 7860) == "http://localhost:7860"  # every interface: open it as localhost
    assert local_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert local_url("::1", 7860) == "http://[::1]:7860"
