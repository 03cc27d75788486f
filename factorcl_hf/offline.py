"""The embedded default's offline backbone: a caption tokenizer, CLIP / SigLIP configs and a
processor, built from local data with no download.

``factorcl-train`` without ``--clip_model`` trains a tiny CLIP from scratch on these (the embedded
demo), and the benchmarks build random-init ViT-B/32-shaped models with them; tests use them too.
Everything here is built from local data:

- :func:`build_caption_tokenizer` trains a word-level byte-level BPE on a list of captions and
  wraps it as a regular ``CLIPTokenizer`` (same normaliser, pre-tokeniser and special tokens
  as OpenAI's), so it saves and loads with ``AutoTokenizer`` like any CLIP tokenizer.
- :func:`tiny_clip_config` / :func:`vit_b32_clip_config` give randomly initialisable
  ``CLIPConfig`` s whose text config pools at the tokenizer's end-of-text id.
- :func:`tiny_siglip_config` gives the same for a SigLIP backbone.
- :func:`tiny_clip_processor` pairs the tokenizer with ``CLIPImageProcessorPil`` (the default
  ``CLIPImageProcessor`` of transformers v5 needs torchvision).
"""

from __future__ import annotations

import heapq
import os
import re
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise

from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPProcessor, CLIPTokenizer, SiglipConfig

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "build_caption_tokenizer",
    "special_token_ids",
    "tiny_clip_config",
    "vit_b32_clip_config",
    "tiny_siglip_config",
    "tiny_clip_processor",
]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_END_OF_WORD = "</w>"


def _byte_level_symbols() -> list[str]:
    """The 256 byte-level symbols, each bare (inside a word) and with ``</w>`` (ending a word).

    With all 512 in the vocabulary any string tokenizes without an unknown token: an unseen
    word falls back to its bytes, exactly as in OpenAI's CLIP vocabulary, whose first 512
    entries are these symbols.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return alphabet + [symbol + _END_OF_WORD for symbol in alphabet]


# ASCII whitespace, which CLIP's normaliser and pre-tokeniser treat as a boundary no piece
# crosses: a caption is pre-tokenised one whitespace-free token at a time, each distinct token
# once (a corpus repeats its words; a call per word or per caption costs more than its work).
_TOKEN = re.compile(r"[^ \t\n\r\f\v]+")


def _caption_words(texts: list[str], max_words: int | None = None) -> Counter:
    """How often each word occurs in ``texts``: the pieces ``CLIPTokenizer`` splits a caption
    into (its own normaliser and pre-tokeniser), the first ``max_words`` of each caption only
    (the rest never reaches a model whose text is truncated there)."""
    reference = CLIPTokenizer().backend_tokenizer
    normalize, pre_tokenize = reference.normalizer.normalize_str, reference.pre_tokenizer.pre_tokenize_str
    known: dict[str, tuple[str, ...]] = {}
    counts: Counter = Counter()
    for text in texts:
        words: list[str] = []
        for match in _TOKEN.finditer(text):
            token = match.group()
            pieces = known.get(token)
            if pieces is None:
                pieces = known[token] = tuple(word for word, _ in pre_tokenize(normalize(token)))
            words.extend(pieces)
            if max_words is not None and len(words) >= max_words:
                break
        counts.update(words[:max_words])
    return counts


def _train_word_merges(counts: Counter) -> list[tuple[str, str]]:
    """BPE merges, in rank order, that turn every word of ``counts`` into a single token.

    The merges are those of the textbook BPE loop — merge the most frequent adjacent pair
    until every word is one symbol — with ties broken by the pair itself. (``tokenizers``'
    trainer breaks ties in hash-map order, so the same captions could give different
    vocabularies from run to run.) The loop is incremental: pair counts are kept up to date
    for the words a merge touches only, and the best pair comes from a heap whose stale
    entries are skipped, so the cost follows the symbols merged, not (merges x corpus).
    """
    words = [(*word[:-1], word[-1] + _END_OF_WORD) for word in counts]
    weights = list(counts.values())
    pair_counts: Counter = Counter()
    holders: dict[tuple[str, str], set[int]] = {}
    for index, symbols in enumerate(words):
        for pair in pairwise(symbols):
            pair_counts[pair] += weights[index]
            holders.setdefault(pair, set()).add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        negative, best = heapq.heappop(heap)
        current = pair_counts.get(best)
        if current != -negative:
            # Stale. A count that fell is re-queued only now, when its old entry comes up:
            # every pair keeps an entry at or above its count, so the best one is never missed.
            if current is not None and current < -negative:
                heapq.heappush(heap, (-current, best))
            continue
        merges.append(best)
        delta: Counter = Counter()
        for index in holders.pop(best):
            old, weight = words[index], weights[index]
            new = _merge_pair(old, best)
            old_pairs, new_pairs = list(pairwise(old)), list(pairwise(new))
            for pair in old_pairs:
                delta[pair] -= weight
            for pair in new_pairs:
                delta[pair] += weight
                holders.setdefault(pair, set()).add(index)
            for pair in set(old_pairs).difference(new_pairs):
                holders.get(pair, set()).discard(index)
            words[index] = new
        for pair, change in delta.items():
            count = pair_counts[pair] + change
            if count > 0:
                pair_counts[pair] = count
                if change > 0:
                    heapq.heappush(heap, (-count, pair))
            else:
                pair_counts.pop(pair, None)
                holders.pop(pair, None)
    return merges


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged, i = [], 0
    while i < len(symbols):
        if symbols[i : i + 2] == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def build_caption_tokenizer(
    texts: Iterable[str], save_dir: str | os.PathLike | None = None, model_max_length: int = 32
):
    """Build a ``CLIPTokenizer`` whose vocabulary holds every word of ``texts`` as one token.

    The vocabulary follows OpenAI's layout: the 512 byte-level symbols, then the tokens the
    merges create (in merge order, ending with whole words such as ``"circle</w>"``), then
    ``<|startoftext|>`` and ``<|endoftext|>``. End-of-text is the highest id and is also the
    padding token, as in OpenAI's tokenizer; CLIP pools the text at its first occurrence.
    Words not in ``texts`` tokenize into byte-level pieces, never into an unknown token.
    Training is deterministic: the same captions give the same vocabulary. Only the words a
    model of ``model_max_length`` positions sees are learned (each caption's first
    ``model_max_length - 2``), and learning them takes time about linear in their letters
    (a million-word corpus builds in seconds: ``benchmarks/tokenizer_build.py``).

    Args:
        texts: captions (any iterable of strings) whose words form the vocabulary.
        save_dir: if given, the tokenizer is also saved there with ``save_pretrained``.
        model_max_length: longest sequence (``truncation=True`` cuts there); make it the text
            config's ``max_position_embeddings``.

    Returns:
        A ``transformers.CLIPTokenizer``, reloadable with ``AutoTokenizer.from_pretrained``.
    """
    texts = list(texts)
    if not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError("`texts` must be a non-empty iterable of strings (the captions to build the vocabulary from)")
    if not isinstance(model_max_length, int) or model_max_length < 2:
        raise ValueError(f"`model_max_length` must be an int >= 2 (room for bos and eos), got {model_max_length!r}")

    # Two of the model's positions hold the start and end tokens; every word is one token.
    merges = _train_word_merges(_caption_words(texts, max_words=model_max_length - 2))
    vocab: dict[str, int] = {}
    for token in _byte_level_symbols() + ["".join(pair) for pair in merges] + [BOS_TOKEN, EOS_TOKEN]:
        vocab.setdefault(token, len(vocab))

    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def special_token_ids(tokenizer) -> dict[str, int]:
    """``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` of ``tokenizer``, as config kwargs."""
    ids = {name: getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"`tokenizer` must define bos, eos and pad tokens; it has no {', '.join(missing)}")
    return ids


def _clip_config(
    vocab_size: int, token_ids: dict[str, int], *, image_size: int, patch_size: int, projection_dim: int,
    max_position_embeddings: int, text: tuple[int, int, int], vision: tuple[int, int, int],
):
    """A ``CLIPConfig``; ``text`` and ``vision`` are each tower's (width, layers, heads)."""
    for name, value in token_ids.items():
        if not isinstance(value, int) or not 0 <= value < vocab_size:
            raise ValueError(f"`{name}` must be an int in [0, vocab_size={vocab_size}), got {value!r}")
    if token_ids["eos_token_id"] == 2:
        # CLIPTextTransformer treats eos id 2 as a legacy checkpoint and pools at the highest id
        # of each sequence instead of at the eos token.
        raise ValueError("`eos_token_id` must not be 2: CLIP reads that as the legacy argmax pooling")
    if image_size % patch_size:
        raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size})")

    def tower(sizes: tuple[int, int, int], **specific) -> dict:
        width, layers, heads = sizes
        return dict(hidden_size=width, intermediate_size=4 * width, projection_dim=projection_dim,
                    num_hidden_layers=layers, num_attention_heads=heads, **specific)

    text_config = tower(text, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, **token_ids)
    vision_config = tower(vision, image_size=image_size, patch_size=patch_size)
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def tiny_clip_config(
    vocab_size: int, *, bos_token_id: int, eos_token_id: int, pad_token_id: int, image_size: int = 32,
    patch_size: int = 8, hidden_size: int = 32, projection_dim: int = 32, num_layers: int = 2, num_heads: int = 2,
    max_position_embeddings: int = 32,
):
    """A ``CLIPConfig`` small enough to train in seconds on a CPU (both towers share the sizes).

    The token ids are required because CLIP pools the text at ``eos_token_id``: pass
    ``vocab_size=len(tokenizer), **special_token_ids(tokenizer)``.
    """
    token_ids = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    sizes = (hidden_size, num_layers, num_heads)
    return _clip_config(vocab_size, token_ids, image_size=image_size, patch_size=patch_size, projection_dim=projection_dim,
                        max_position_embeddings=max_position_embeddings, text=sizes, vision=sizes)


def tiny_siglip_config(
    vocab_size: int, *, bos_token_id: int, eos_token_id: int, pad_token_id: int, image_size: int = 32,
    patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
    max_position_embeddings: int = 32,
):
    """A ``SiglipConfig`` as small as :func:`tiny_clip_config` (both towers ``hidden_size``
    wide, the text head projecting to the same size). SigLIP pools the text at its last
    position, so pad captions to ``max_position_embeddings`` (``padding="max_length"``)."""
    for name, value in dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id).items():
        if not isinstance(value, int) or not 0 <= value < vocab_size:
            raise ValueError(f"`{name}` must be an int in [0, vocab_size={vocab_size}), got {value!r}")
    if image_size % patch_size:
        raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size})")
    tower = dict(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=num_heads)
    text_config = dict(tower, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                       bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                       projection_size=hidden_size)
    return SiglipConfig(text_config=text_config, vision_config=dict(tower, image_size=image_size, patch_size=patch_size))


def vit_b32_clip_config(
    vocab_size: int = 49408, *, bos_token_id: int = 49406, eos_token_id: int = 49407, pad_token_id: int = 49407,
):
    """The architecture of OpenAI CLIP ViT-B/32, for random-init benchmarks (never downloaded).

    224 px images in 32 px patches; vision tower 768 wide, 12 layers, 12 heads; text tower 512
    wide, 12 layers, 8 heads, 77 positions; 512-d projection. The default ids are those of
    OpenAI's 49,408-token vocabulary; with a caption tokenizer pass
    ``vocab_size=len(tokenizer), **special_token_ids(tokenizer)``.
    """
    token_ids = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return _clip_config(vocab_size, token_ids, image_size=224, patch_size=32, projection_dim=512,
                        max_position_embeddings=77, text=(512, 12, 8), vision=(768, 12, 12))


def tiny_clip_processor(tokenizer, image_size: int = 32):
    """A ``CLIPProcessor`` of ``tokenizer`` and a ``CLIPImageProcessorPil`` sized ``image_size``.

    Images are resized (shortest edge) and centre-cropped to ``image_size`` square, then
    normalised with OpenAI's CLIP mean/std, like the original processor at 224 px.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
