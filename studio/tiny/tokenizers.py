"""Offline tokenizers for the tiny models, built with the ``tokenizers`` library.

Small vocabularies, but the real tokenizer classes the pipelines expect, so
``save_pretrained`` / ``from_pretrained`` round-trip exactly as the hub ones do.
Each text encoder's ``vocab_size`` must be ``len(tokenizer)``.
"""

from __future__ import annotations

import string

from tokenizers.pre_tokenizers import ByteLevel
from transformers import BertTokenizer, CLIPTokenizer, GemmaTokenizer, T5Tokenizer

WORDS = ["a", "an", "the", "of", "in", "on", "and", "with", "red", "blue", "green", "fox", "cat", "dog", "photo", "painting", "portrait", "dark", "light", "city", "forest", "sky", "sea", "mountain", "night", "day", "golden", "hour", "cinematic", "detailed", "style"]
CHARS = string.ascii_lowercase + string.digits + string.punctuation


def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """Byte-level BPE like CLIP's: every byte, every byte ending a word, and a few whole words."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet] + [w + "</w>" for w in WORDS]:
        vocab.setdefault(token, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    merges = []  # whole words come from the vocab only; characters are enough for random weights
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def t5_tokenizer(max_length: int = 512) -> T5Tokenizer:
    """Unigram like T5's sentencepiece model."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + word, -1.0) for word in WORDS] + [(c, -5.0) for c in CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def gemma_tokenizer(max_length: int = 300) -> GemmaTokenizer:
    """Byte-fallback BPE like Gemma's, padding on the right as the Sana and Lumina pipelines expect."""
    vocab: dict[str, int] = {}
    for token in ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁"] + ["▁" + w for w in WORDS] + list(CHARS):
        vocab.setdefault(token, len(vocab))
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    # <bos> first, as real Gemma: without it an empty negative prompt has no tokens at all
    # and the pipelines' attention masks turn every image into NaN.
    return GemmaTokenizer(
        vocab=vocab, merges=[], model_max_length=max_length, padding_side="right", add_bos_token=True
    )


def bert_tokenizer(max_length: int = 77) -> BertTokenizer:
    """WordPiece like the BERT-style CLIP text encoder of HunyuanDiT."""
    vocab: dict[str, int] = {}
    for token in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list(CHARS) + ["##" + c for c in CHARS]:
        vocab.setdefault(token, len(vocab))
    return BertTokenizer(vocab=vocab, model_max_length=max_length)
