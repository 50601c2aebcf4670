"""Prompt embeddings through compel for the CLIP-based family (SDXL): weights, AND, long prompts.

People type A1111-style syntax; compel has its own. ``to_compel`` translates the A1111 forms
and leaves compel's own syntax (``word+``, ``(words)1.3``, ``.blend()``, ``.and()``) alone:

- ``(words:1.5)`` becomes ``(words)1.5``: a per-token weight (1 is neutral, 0 removes the words).
- ``cat AND dog`` becomes ``("cat", "dog").and()``: each clause is encoded on its own and the
  embeddings are concatenated, so the image gets both. ``a cat :1.2 AND a dog`` weights a clause.
- ``(dark:-1)``, a negative weight, becomes a clause of its own with that weight: compel's
  per-token weights stop at 0 (removal), while a clause weight w gives ``empty + w * (clause - empty)``,
  which points away from the words.

Prompts longer than CLIP's 77 tokens are encoded in 77-token chunks and concatenated, never
truncated; the negative prompt is padded to the same length. A prompt compel cannot parse
(e.g. ``(a, b).blend(1)``, one weight for two prompts, or parentheses nested deeper than
``MAX_NESTING``) is encoded as literal text instead; more than ``MAX_CLAUSES`` clauses is an
``InvalidRequest`` naming the field, since every clause adds 77 tokens to each attention step.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import Blend, Conjunction, Fragment, PromptParser

from studio.errors import InvalidRequest

log = logging.getLogger(__name__)

AND_SEPARATOR = re.compile(r"\s+AND\s+")  # A1111's keyword: upper case, between words
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
GROUP_WEIGHT = re.compile(rf":\s*({NUMBER})\s*$")  # the tail of "(words:1.5)"
CLAUSE_WEIGHT = re.compile(rf"^(.*?)\s+:\s*({NUMBER})\s*$", re.DOTALL)  # "a cat :1.2" (a space before the colon)
LITERAL_ESCAPES = str.maketrans({"(": r"\(", ")": r"\)", '"': r"\""})
MAX_NESTING = 20  # deeper parentheses are not weighting; read them as literal text
MAX_CLAUSES = 16


def to_compel(prompt: str) -> str:
    """Translate A1111-style weights, ``AND`` and negative weights into compel syntax."""
    parts = AND_SEPARATOR.split(prompt.strip())
    clauses: list[tuple[str, float]] = []
    for part in parts:
        weight = 1.0
        if len(parts) > 1 and (match := CLAUSE_WEIGHT.match(part)):
            part, weight = match.group(1), float(match.group(2))
        text, negatives = _translate_groups(part)
        clauses.append((text, weight))
        clauses += [(negative_text, negative_weight * weight) for negative_text, negative_weight in negatives]
    if len(clauses) == 1 and clauses[0][1] == 1.0:
        return clauses[0][0]
    quoted = ", ".join('"' + text.replace('"', r"\"") + '"' for text, _ in clauses)
    weights = ", ".join(_number(weight) for _, weight in clauses)
    return f"({quoted}).and({weights})"


@dataclasses.dataclass
class _Group:
    """A parenthesised span of a prompt; ``closed`` is False for a "(" that never closes (literal text)."""

    parts: list = dataclasses.field(default_factory=list)  # str | _Group
    closed: bool = False


def _translate_groups(text: str) -> tuple[str, list[tuple[str, float]]]:
    """``(words:w)`` -> ``(words)w``; groups with w < 0 are cut out and returned as (text, w) clauses."""
    translated, negatives = _render(_group_tree(text))
    if negatives:
        translated = re.sub(r"\s+", " ", translated).strip(" ,")
    return translated, negatives


def _group_tree(text: str) -> list:
    """Split ``text`` into strings and nested ``_Group``s in one pass; escaped parentheses stay text."""
    root = _Group(closed=True)
    open_groups = [root]
    chars: list[str] = []

    def flush():
        if chars:
            open_groups[-1].parts.append("".join(chars))
            chars.clear()

    escaped = False
    for char in text:
        if escaped or char == "\\":
            escaped = not escaped  # "\(" is a literal parenthesis in both syntaxes
            chars.append(char)
        elif char == "(":
            flush()
            group = _Group()
            open_groups[-1].parts.append(group)
            open_groups.append(group)
            if len(open_groups) > MAX_NESTING:
                raise ValueError(f"parentheses nested deeper than {MAX_NESTING}")
        elif char == ")" and len(open_groups) > 1:
            flush()
            open_groups.pop().closed = True
        else:
            chars.append(char)
    flush()
    return root.parts


def _render(parts: list) -> tuple[str, list[tuple[str, float]]]:
    pieces: list[str] = []
    negatives: list[tuple[str, float]] = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
            continue
        inner, weight = part.parts, None
        if part.closed and inner and isinstance(inner[-1], str) and (match := GROUP_WEIGHT.search(inner[-1])):
            inner, weight = inner[:-1] + [inner[-1][: match.start()]], float(match.group(1))
        text, inner_negatives = _render(inner)
        negatives += inner_negatives
        if weight is None:
            pieces.append("(" + text + (")" if part.closed else ""))
        elif weight >= 0:
            pieces.append(f"({text}){_number(weight)}")
        else:
            negatives.append((text.strip(), weight))  # leaves the clause, becomes a clause of its own
    return "".join(pieces), negatives


def _number(value: float) -> str:
    """Plain decimal notation: compel's parser reads neither exponents nor a bare trailing dot."""
    return f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def parse(prompt: str, field: str = "prompt") -> tuple[str, Conjunction]:
    """The compel text for ``prompt`` and its parse; unparseable syntax falls back to literal text."""
    try:
        text = to_compel(prompt)
        conjunction = PromptParser().parse_conjunction(text)
    except Exception as exc:  # pyparsing and compel raise several unrelated exception types
        log.warning("%s: cannot parse weighting syntax (%s); encoding it as literal text", field, exc)
        text = prompt.translate(LITERAL_ESCAPES)
        try:
            conjunction = PromptParser().parse_conjunction(text)
        except Exception as exc:
            raise InvalidRequest(
                f"{field}: cannot read the prompt syntax ({exc}); write weights as (words:1.2) and escape "
                r"literal parentheses as \( and \)",
                field=field,
            ) from None
    if len(conjunction.prompts) > MAX_CLAUSES:
        # Each clause is another 77 tokens for every cross-attention layer at every step.
        raise InvalidRequest(
            f"{field}: {len(conjunction.prompts)} AND clauses (a negative weight makes one too); "
            f"allowed 1..{MAX_CLAUSES}",
            field=field,
        )
    return text, conjunction


def pooled_text(conjunction: Conjunction) -> str:
    """The plain words of a parsed prompt, for the pooled embedding (which compel would take from the
    raw syntax, brackets and numbers included); removed and negative parts are left out."""
    words = []
    for part, weight in zip(conjunction.prompts, conjunction.weights):
        if weight <= 0:
            continue
        for flattened in part.prompts if isinstance(part, Blend) else [part]:
            words += [f.text for f in flattened.children if isinstance(f, Fragment) and f.weight > 0 and f.text]
    return " ".join(words)


def _compel(tokenizer, text_encoder) -> Compel:
    return Compel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,  # what SDXL reads
        truncate_long_prompts=False,
    )


def _pad(compel: Compel, embeds: torch.Tensor, length: int) -> torch.Tensor:
    """Append empty-prompt chunks up to ``length`` tokens, as compel pads its own batches."""
    empty = compel.conditioning_provider.empty_z.to(embeds).expand(embeds.shape[0], -1, -1)
    while embeds.shape[1] < length:
        embeds = torch.cat([embeds, empty], dim=1)
    return embeds


def sdxl_embeddings(pipe, prompt: str, negative_prompt: str | None, classifier_free_guidance: bool) -> dict:
    """The ``prompt_embeds``/``pooled_prompt_embeds`` (and negative) kwargs for a ``StableDiffusionXLPipeline``.

    One prompt, batch size 1: the pipeline repeats them for ``num_images_per_prompt``. Without
    guidance no negative is built. Without a negative prompt, a pipeline configured with
    ``force_zeros_for_empty_prompt`` (SDXL base) zeroes the negative itself, so none is passed;
    otherwise the empty prompt is encoded as the negative, padded to the prompt's length.
    """
    kwargs, _ = sdxl_batch_embeddings(pipe, [(prompt, negative_prompt)], classifier_free_guidance)
    return kwargs


@torch.no_grad()
def sdxl_batch_embeddings(
    pipe, pairs: list[tuple[str, str | None]], classifier_free_guidance: bool
) -> tuple[dict, list[int]]:
    """``sdxl_embeddings`` of several (prompt, negative prompt) pairs, one row each (a batch of jobs), and
    the tokens each pair's own call would have (the longer of its prompt and negative).

    Every prompt and negative is padded to the longest of them all with empty-prompt chunks, as compel
    pads its own batches (``pad_conditioning_tensors_to_same_length``). Where one pair's negative is
    zeroes (none given, ``force_zeros_for_empty_prompt``) and another's is not, its row is zeroes, as the
    pipeline would make it; when no pair has one, none is passed.
    """
    parsed = [parse(prompt, "prompt") for prompt, _ in pairs]
    zeroes = pipe.config.force_zeros_for_empty_prompt
    negated = [classifier_free_guidance and bool(negative or not zeroes) for _, negative in pairs]
    parsed += [parse(negative or "", "negative_prompt") for (_, negative), wanted in zip(pairs, negated) if wanted]

    encoders = [_compel(pipe.tokenizer, pipe.text_encoder), _compel(pipe.tokenizer_2, pipe.text_encoder_2)]
    hidden = [[encoder.build_conditioning_tensor(text) for text, _ in parsed] for encoder in encoders]
    tokens = [max(rows[index].shape[1] for rows in hidden) for index in range(len(parsed))]  # each text's own
    length = max(tokens)
    embeds = torch.cat(
        [torch.cat([_pad(encoder, row, length) for row in rows]) for encoder, rows in zip(encoders, hidden)], dim=-1
    )
    pooled = encoders[1].conditioning_provider.get_pooled_embeddings(
        [pooled_text(conjunction) for _, conjunction in parsed]
    ).to(embeds.dtype)

    count = len(pairs)
    kwargs = {"prompt_embeds": embeds[:count], "pooled_prompt_embeds": pooled[:count]}
    own = tokens[:count]
    if any(negated):
        rows = iter(range(count, len(parsed)))
        picks = [next(rows) if wanted else None for wanted in negated]
        kwargs.update(
            negative_prompt_embeds=_rows(embeds, picks), negative_pooled_prompt_embeds=_rows(pooled, picks)
        )
        own = [max(tokens[index], tokens[pick]) if pick is not None else tokens[index] for index, pick in enumerate(picks)]
    return kwargs, own


def _rows(tensor: torch.Tensor, picks: list[int | None]) -> torch.Tensor:
    """The rows ``picks`` of ``tensor``, zeroes for None (shaped as a row)."""
    return torch.stack([tensor[row] if row is not None else torch.zeros_like(tensor[0]) for row in picks])
