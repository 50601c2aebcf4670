"""What README's "Reproducibility" promises, checked on tiny real pipelines in this process:

- the same request with the same seed gives the same bytes (PNG, parameters included);
- image i of an n=2 batch matches the n=1 image of seed + i up to rounding: batched float math
  may move a channel value by one level, never more.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from studio.schemas import GenerationRequest

MODELS = ("flux-schnell", "sdxl-turbo")  # a transformer and a UNet family


@pytest.fixture(scope="module")
def engine_and_catalog(tiny_catalog):
    from studio.engine import Engine

    return Engine("cpu"), tiny_catalog(*MODELS)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("model_id", MODELS)
def test_same_request_same_bytes_and_batch_members_match_up_to_rounding(engine_and_catalog, model_id):
    engine, catalog = engine_and_catalog
    spec = catalog.get(model_id)

    def run(seed: int, n: int) -> list[bytes]:
        return engine.run(spec, spec.check(GenerationRequest(prompt="a red fox", seed=seed, num_images=n))).images

    first, again = run(40, 1), run(40, 1)
    assert first == again  # byte for byte
    batch = run(40, 2)
    for index, png in enumerate(batch):
        alone = pixels(run(40 + index, 1)[0])
        assert np.abs(pixels(png) - alone).max() <= 1, f"{model_id}: image {index} of n=2 vs n=1, seed {40 + index}"
