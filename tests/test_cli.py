"""End to end on the command line: every catalog id generates from its tiny folder."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from studio import cli, pngmeta
from studio.catalog import load_catalog

ALL_IDS = [spec.id for spec in load_catalog()]


@pytest.mark.parametrize("model_id", ALL_IDS)
def test_every_model_generates_the_requested_size(tiny_models, tmp_path, model_id):
    models_dir = tiny_models(model_id)
    spec = load_catalog(models_dir).get(model_id)
    width, height = spec.size_presets()[-1] if spec.limits.allowed_sizes else (spec.defaults.width, spec.defaults.height)
    out = tmp_path / "fox.png"
    code = cli.main(["generate", "--models-dir", str(models_dir), "--model", model_id, "--prompt", "a red fox",
                     "--size", f"{width}x{height}", "--seed", "11", "-o", str(out)])
    assert code == 0
    with Image.open(out) as image:
        assert image.size == (width, height)
    params = pngmeta.read(out)
    assert (params["model"], params["seed"], params["prompt"]) == (model_id, 11, "a red fox")


def test_several_images_are_numbered_and_reproducible(tiny_models, tmp_path):
    models_dir = str(tiny_models("sdxl-turbo"))
    args = ["generate", "--models-dir", models_dir, "--model", "sdxl-turbo", "--prompt", "a red fox", "--seed", "5"]
    assert cli.main(args + ["--n", "2", "-o", str(tmp_path / "fox.png")]) == 0
    assert cli.main(args + ["--seed", "6", "-o", str(tmp_path / "alone.png")]) == 0
    first, second = tmp_path / "fox-1.png", tmp_path / "fox-2.png"
    assert pngmeta.read(first)["seed"] == 5 and pngmeta.read(second)["seed"] == 6
    # image 2 of the batch is seed 6: the same as seed 6 generated alone (batching may shift the last bit)
    batch = np.asarray(Image.open(second).convert("RGB"), dtype=np.int16)
    alone = np.asarray(Image.open(tmp_path / "alone.png").convert("RGB"), dtype=np.int16)
    assert np.abs(batch - alone).max() <= 2


def test_the_output_suffix_picks_the_format_and_the_parameters_stay(tiny_models, tmp_path):
    models_dir = str(tiny_models("sdxl-turbo"))
    args = ["generate", "--models-dir", models_dir, "--model", "sdxl-turbo", "--prompt", "a red fox", "--seed", "5"]
    assert cli.main(args + ["--n", "2", "-o", str(tmp_path / "fox.webp")]) == 0
    assert cli.main(args + ["-o", str(tmp_path / "fox.JPG")]) == 0
    for name, pil_format, seed in (("fox-1.webp", "WEBP", 5), ("fox-2.webp", "WEBP", 6), ("fox.JPG", "JPEG", 5)):
        with Image.open(tmp_path / name) as image:
            assert image.format == pil_format
        params = pngmeta.read(tmp_path / name)
        assert (params["seed"], params["model"]) == (seed, "sdxl-turbo")
        assert "Seed: " in params["parameters"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "model: unknown model 'nope'"),
        (["--model", "flux-dev", "--size", "1000x1000"], "width: 1000 must be a multiple of 16"),
        (["--model", "hunyuan-dit", "--size", "1000x1000"], "size: 1000x1000 is not supported by hunyuan-dit"),
        (["--model", "sdxl-base", "--n", "5"], "num_images: Input should be less than or equal to 4 (allowed 1..4)"),
        (["--model", "sdxl-base", "--steps", "0"], "steps: 0 is out of range for sdxl-base; allowed 1..150"),
        (["--model", "flux-schnell", "--negative-prompt", "blurry"], "negative_prompt: flux-schnell does not support"),
        (["--model", "sdxl-base", "-o", "x.gif"], "output: '.gif' files are not supported; use .png, .jpg"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    run = subprocess.run(
        [sys.executable, "-m", "studio", "generate", "--prompt", "a red fox", "-o", str(tmp_path / "x.png"), *args],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {message}")
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert not (tmp_path / "x.png").exists()


def test_the_flags_are_the_request_fields_that_declare_one():
    """Each flag comes from GenerationRequest's declaration: its dest, type, required-ness and bounds."""
    from studio.schemas import request_fields

    generate = cli.build_parser()._subparsers._group_actions[0].choices["generate"]
    actions = {action.dest: action for action in generate._actions}
    declared = {name: faces.flag for name, _, faces in request_fields() if faces.flag}
    assert declared == {"prompt": "--prompt", "negative_prompt": "--negative-prompt", "model": "--model",
                        "steps": "--steps", "sampler": "--sampler", "guidance": "--guidance", "seed": "--seed",
                        "num_images": "--n", "loras": "--lora"}
    for name, flag in declared.items():
        assert actions[name].option_strings == [flag]
    assert actions["prompt"].required and not actions["steps"].required
    assert (actions["steps"].type, actions["guidance"].type) == (int, float)
    assert "allowed 1..150" in actions["steps"].help and "allowed 1..4" in actions["num_images"].help
    args = cli.build_parser().parse_args(["generate", "--prompt", "a fox", "--steps", "3", "-o", "x.png"])
    assert cli.request_flags(args) == {"prompt": "a fox", "steps": 3}  # unset flags keep the field's default


def test_generate_takes_the_memory_plan(tiny_models, tmp_path):
    models_dir = str(tiny_models("sdxl-turbo"))
    out = tmp_path / "fp8.png"
    assert cli.main(["generate", "--models-dir", models_dir, "--model", "sdxl-turbo", "--prompt", "a red fox",
                     "--memory-plan", "fp8", "-o", str(out)]) == 0
    assert pngmeta.read(out.read_bytes())["memory_plan"] == "fp8"
