"""Compel prompt handling for SDXL: long prompts, weights, AND, negative weights, bad syntax."""

from __future__ import annotations

import pytest
import torch

from studio import families, prompts
from studio.errors import InvalidRequest
from studio.schemas import GenerationRequest

CHUNK = 77  # CLIP's window; compel encodes longer prompts in chunks of this many tokens


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return tiny_catalog("sdxl-base")


@pytest.fixture(scope="module")
def pipe(catalog):
    return families.load_pipeline(catalog.get("sdxl-base"), "cpu")


@pytest.fixture
def embed(pipe):
    def encode(prompt: str, negative: str | None = None, guidance: bool = True) -> dict:
        return prompts.sdxl_embeddings(pipe, prompt, negative, guidance)

    return encode


def hidden(kwargs: dict) -> torch.Tensor:
    return kwargs["prompt_embeds"]


def test_a_plain_prompt_encodes_exactly_as_the_pipeline_does(pipe, embed):
    ours = embed("a red fox in a forest", "blurry")
    theirs = pipe.encode_prompt(
        "a red fox in a forest", device="cpu", do_classifier_free_guidance=True, negative_prompt="blurry"
    )
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for name, expected in zip(names, theirs):
        torch.testing.assert_close(ours[name], expected.detach(), atol=1e-5, rtol=1e-5)


def words_for_tokens(pipe, words: list[str], limit: int) -> str:
    """The longest run of ``words`` that fits ``limit`` tokens without start/end markers."""
    count = 0
    while count < len(words) and len(pipe.tokenizer(" ".join(words[: count + 1])).input_ids) - 2 <= limit:
        count += 1
    assert count, "no word fits"
    return " ".join(words[:count])


def test_a_200_token_prompt_is_not_truncated(pipe, catalog, embed):
    words = ("a red fox in a dark forest at golden hour, cinematic photo of the sky. " * 5).split()
    long_prompt = " ".join(words)
    assert 200 <= len(pipe.tokenizer(long_prompt).input_ids) < 6 * CHUNK
    first_77 = words_for_tokens(pipe, words, CHUNK - 2)

    long_embeds, short_embeds = hidden(embed(long_prompt)), hidden(embed(first_77))
    assert short_embeds.shape[1] == CHUNK
    assert long_embeds.shape[1] > 2 * CHUNK and long_embeds.shape[1] % CHUNK == 0
    changed_tail = hidden(embed(long_prompt.rsplit(" ", 1)[0] + " mountain"))
    assert not torch.allclose(long_embeds, changed_tail)  # the last word still counts

    spec = catalog.get("sdxl-base")
    images = [
        families.generate(pipe, spec, spec.check(GenerationRequest(prompt=text, seed=5)), lambda s, t: None)[0]
        for text in (long_prompt, first_77)
    ]
    assert images[0].tobytes() != images[1].tobytes()


def test_a1111_weights_change_the_embedding(embed):
    plain = hidden(embed("a fox"))
    assert not torch.allclose(hidden(embed("a (fox:1.5)")), plain)
    torch.testing.assert_close(hidden(embed("a (fox:1.0)")), plain)  # weight 1 is neutral: the syntax was read
    torch.testing.assert_close(hidden(embed("a (fox:1.5)")), hidden(embed("a (fox)1.5")))  # compel's own form


def test_and_encodes_each_clause_and_concatenates_them(embed):
    blend = hidden(embed("cat AND dog"))
    assert blend.shape[1] == 2 * CHUNK
    torch.testing.assert_close(blend[:, :CHUNK], hidden(embed("cat")))
    torch.testing.assert_close(blend[:, CHUNK:], hidden(embed("dog")))
    assert hidden(embed("cat dog")).shape[1] == CHUNK
    assert hidden(embed("cat and dog")).shape[1] == CHUNK  # lower-case "and" is an ordinary word
    torch.testing.assert_close(hidden(embed('("cat", "dog").and()')), blend)


def test_a_clause_weight_scales_the_clause_from_the_empty_prompt(embed):
    empty, cat = hidden(embed("")), hidden(embed("a cat"))
    weighted = hidden(embed("a cat :0.5 AND a dog"))
    torch.testing.assert_close(weighted[:, :CHUNK], empty + 0.5 * (cat - empty), atol=1e-5, rtol=1e-5)


def test_a_negative_weight_points_away_from_the_words(embed):
    empty, cat, dark = hidden(embed("")), hidden(embed("a cat")), hidden(embed("dark"))
    result = embed("a cat, (dark:-1.0)")
    away = hidden(result)
    assert away.shape[1] == 2 * CHUNK
    torch.testing.assert_close(away[:, :CHUNK], cat)
    torch.testing.assert_close(away[:, CHUNK:], empty - (dark - empty), atol=1e-5, rtol=1e-5)
    # The pooled (global) embedding reads the words that are wanted, not the syntax or "dark".
    torch.testing.assert_close(result["pooled_prompt_embeds"], embed("a cat")["pooled_prompt_embeds"])
    assert not torch.allclose(away[:, :CHUNK], hidden(embed("a cat, dark")))


def test_negative_prompt_is_padded_to_the_prompt_length(embed):
    long_text = ", ".join(["a red fox in a dark forest"] * 20)
    for prompt, negative in ((long_text, "blurry"), ("a fox", long_text)):
        kwargs = embed(prompt, negative)
        assert kwargs["prompt_embeds"].shape == kwargs["negative_prompt_embeds"].shape
        assert kwargs["prompt_embeds"].shape[1] > CHUNK


def test_no_negative_without_guidance_or_when_the_pipeline_zeroes_it(embed):
    assert set(embed("a fox", None, guidance=False)) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert set(embed("a fox", None, guidance=True)) == {"prompt_embeds", "pooled_prompt_embeds"}  # SDXL zeroes it
    assert "negative_prompt_embeds" in embed("a fox", "blurry", guidance=True)


@pytest.mark.parametrize("prompt", ["a (cat in a hat", "a cat) in a hat", "smile :)", "((((", '"unclosed quote'])
def test_unbalanced_syntax_is_read_as_literal_text(embed, prompt):
    kwargs = embed(prompt, "blurry")
    assert kwargs["prompt_embeds"].shape[1] == CHUNK
    assert torch.isfinite(kwargs["prompt_embeds"]).all()


def test_syntax_compel_rejects_falls_back_to_literal_text(embed):
    text, _ = prompts.parse("(a, b).blend(1)")  # one weight for two prompts
    assert text == r"\(a, b\).blend\(1\)"
    torch.testing.assert_close(hidden(embed("(a, b).blend(1)")), hidden(embed(text)))


def test_unreadable_syntax_is_an_invalid_request_naming_the_field(monkeypatch):
    def refuse(self, text, verbose=False):
        raise ValueError("parser broke")

    monkeypatch.setattr(prompts.PromptParser, "parse_conjunction", refuse)
    with pytest.raises(InvalidRequest) as error:
        prompts.parse("a (fox:1.5)", "negative_prompt")
    assert error.value.field == "negative_prompt"
    assert error.value.message.startswith("negative_prompt:")


@pytest.mark.parametrize(
    "a1111, compel_text",
    [
        ("a (fox:1.5) in a forest", "a (fox)1.5 in a forest"),
        ("((a:1.2) b:0.5)", "((a)1.2 b)0.5"),
        ("cat AND dog", '("cat", "dog").and(1, 1)'),
        ("a cat :1.2 AND a dog", '("a cat", "a dog").and(1.2, 1)'),
        ("a cat, (dark:-1.0)", '("a cat", "dark").and(1, -1)'),
        ("(a (dark:-0.5) b:1.2) AND c", '("(a b)1.2", "dark", "c").and(1, -0.5, 1)'),
        ('say "hi" AND wave', r'("say \"hi\"", "wave").and(1, 1)'),
        (r"\(literal:1.5\)", r"\(literal:1.5\)"),
        ("a fox++ (in a forest)0.8", "a fox++ (in a forest)0.8"),  # compel syntax passes through
        ("cat and dog", "cat and dog"),
    ],
)
def test_to_compel_translates_a1111_syntax(a1111, compel_text):
    assert prompts.to_compel(a1111) == compel_text


def test_too_many_clauses_is_an_invalid_request_naming_the_field():
    assert len(prompts.parse(" AND ".join(["cat"] * prompts.MAX_CLAUSES))[1].prompts) == prompts.MAX_CLAUSES
    with pytest.raises(InvalidRequest) as error:
        prompts.parse("a cat " + "(dark:-1) " * prompts.MAX_CLAUSES, "prompt")
    assert error.value.field == "prompt"
    assert f"allowed 1..{prompts.MAX_CLAUSES}" in error.value.message


def test_deep_nesting_is_read_as_literal_text():
    text, conjunction = prompts.parse("(" * 50 + "fox:1.5" + ")" * 50)
    assert text.startswith(r"\(\(")
    assert [fragment.weight for fragment in conjunction.prompts[0].children] == [1.0]
