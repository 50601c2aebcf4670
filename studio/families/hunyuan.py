"""HunyuanDiT v1.2: bilingual (Chinese and English) DiT with a BERT-style CLIP and an mT5 text encoder.

The family rules:

* Only the ten sizes HunyuanDiT was trained on exist (the catalog's ``allowed_sizes``, checked
  before a job gets here). The pipeline would otherwise "bin" any other size to the nearest
  of its own list without telling anyone, so it runs with ``use_resolution_binning=False``:
  the size the caller was promised is the size it gets.
* Without a negative prompt the official inference code (Tencent/HunyuanDiT,
  ``hydit/constants.py``) guides away from its default negative prompt rather than from an
  empty one. Diffusers leaves this to the caller; the catalog keeps it as the model's default
  ``negative_prompt``, so the request arrives here with it already filled in.
* Classifier-free guidance above 1, as the pipeline decides; both text encoders see the
  prompt (77 BERT tokens, 256 mT5 tokens, fixed by the pipeline).
"""

from __future__ import annotations

from diffusers import HunyuanDiTPipeline

from studio.catalog import ModelSpec
from studio.families import base
from studio.schemas import GenerationRequest


def generate(pipe: HunyuanDiTPipeline, spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> list:
    result = pipe(
        **base.call_arguments(spec, request, on_step),
        use_resolution_binning=False,  # the catalog already allowed exactly this size
        output_type="pil",
    )
    return result.images
