import numpy as np
import pytest
import torch
from PIL import Image

from factorcl_hf.offline import (
    build_caption_tokenizer,
    special_token_ids,
    tiny_clip_config,
    tiny_clip_processor,
    vit_b32_clip_config,
)

CAPTIONS = [
    "a red circle in the top left corner",
    "A blue square, bottom-right!",
    "the green triangle's outline at the centre",
    "at that hat",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_caption_tokenizer(CAPTIONS, model_max_length=24)


@pytest.fixture(scope="module")
def config(tokenizer):
    return tiny_clip_config(len(tokenizer), **special_token_ids(tokenizer), max_position_embeddings=24)


def images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(20 + i, 28, 3), dtype=np.uint8)) for i in range(count)]


def test_every_caption_word_is_one_token_between_bos_and_eos(tokenizer):
    backend = tokenizer.backend_tokenizer
    for caption in CAPTIONS:
        words = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(caption))
        ids = tokenizer(caption)["input_ids"]
        assert len(ids) == len(words) + 2, (caption, tokenizer.convert_ids_to_tokens(ids))
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # OpenAI's layout: eos is the highest id, so no vocabulary token can sit after it.
    assert tokenizer.eos_token_id == len(tokenizer) - 1 and tokenizer.pad_token_id == tokenizer.eos_token_id


def test_padded_batches_end_each_sequence_with_the_configs_eos(tokenizer, config):
    batch = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(dim=1)
    last_ids = batch["input_ids"][torch.arange(len(CAPTIONS)), lengths - 1]
    assert torch.all(last_ids == tokenizer.eos_token_id)
    assert config.text_config.eos_token_id == tokenizer.eos_token_id
    assert config.text_config.bos_token_id == tokenizer.bos_token_id
    assert config.text_config.pad_token_id == tokenizer.pad_token_id
    assert config.text_config.vocab_size == len(tokenizer)


def test_unseen_words_fall_back_to_bytes_without_unknown_tokens(tokenizer):
    text = "Zebra Ünïcode 123 😀"
    ids = tokenizer(text)["input_ids"]
    # The unknown token is end-of-text: a fallback to it would put eos inside the caption.
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")


def test_truncation_stops_at_model_max_length(tokenizer):
    ids = tokenizer(" ".join(["circle"] * 100), truncation=True)["input_ids"]
    assert len(ids) == 24 and ids[-1] == tokenizer.eos_token_id


def test_tokenizer_is_deterministic_and_round_trips_offline(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    rebuilt = build_caption_tokenizer(CAPTIONS, save_dir=tmp_path, model_max_length=24)
    assert rebuilt.get_vocab() == tokenizer.get_vocab()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = CAPTIONS + ["an unseen purple hexagon"]
    assert loaded(texts, padding=True)["input_ids"] == tokenizer(texts, padding=True)["input_ids"]
    assert loaded.model_max_length == 24 and loaded.eos_token_id == tokenizer.eos_token_id


def test_clip_model_features_on_processor_outputs_pool_at_eos(tokenizer, config):
    from transformers import CLIPModel

    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    processor = tiny_clip_processor(tokenizer, image_size=config.vision_config.image_size)
    inputs = processor(text=CAPTIONS, images=images(len(CAPTIONS)), padding=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (len(CAPTIONS), 3, 32, 32)
    with torch.no_grad():
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        alone = model.get_text_features(**processor(text=CAPTIONS[3:], return_tensors="pt"))
    assert text.pooler_output.shape == image.pooler_output.shape == (len(CAPTIONS), config.projection_dim)
    # Pooling at the first eos makes padding invisible: the shortest caption padded in the
    # batch gets the same embedding as on its own.
    torch.testing.assert_close(text.pooler_output[3:], alone.pooler_output, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(text.pooler_output[0], text.pooler_output[3])


def test_processor_round_trips_offline(tokenizer, tmp_path):
    from transformers import AutoProcessor

    processor = tiny_clip_processor(tokenizer, image_size=16)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded.image_processor).__name__ == "CLIPImageProcessorPil"
    kwargs = dict(text=CAPTIONS[:2], images=images(2, seed=1), padding=True, return_tensors="pt")
    expected, actual = processor(**kwargs), loaded(**kwargs)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])
    assert expected["pixel_values"].shape == (2, 3, 16, 16)


def test_vit_b32_config_has_the_openai_architecture(tokenizer):
    config = vit_b32_clip_config()
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size // vision.patch_size) ** 2 == 49  # 7x7 patches of 32 px
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (768, 12, 12)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (512, 12, 8)
    assert config.projection_dim == text.projection_dim == vision.projection_dim == 512
    assert text.max_position_embeddings == 77 and text.eos_token_id == text.vocab_size - 1
    own = vit_b32_clip_config(len(tokenizer), **special_token_ids(tokenizer)).text_config
    assert own.vocab_size == len(tokenizer) and own.eos_token_id == tokenizer.eos_token_id


def test_builders_reject_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="texts"):
        build_caption_tokenizer([])
    with pytest.raises(ValueError, match="eos_token_id"):
        tiny_clip_config(10, bos_token_id=0, eos_token_id=10, pad_token_id=0)
    with pytest.raises(ValueError, match="eos_token_id"):  # 2 switches CLIP to legacy pooling
        tiny_clip_config(10, bos_token_id=0, eos_token_id=2, pad_token_id=2)
    with pytest.raises(ValueError, match="patch_size"):
        tiny_clip_config(len(tokenizer), **special_token_ids(tokenizer), image_size=30)
    with pytest.raises(ValueError, match="image_size"):
        tiny_clip_processor(tokenizer, image_size=0)
