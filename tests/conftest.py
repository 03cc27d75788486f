import os

# No network here: make every Hub lookup fail fast instead of retrying for ~20 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402
import torch  # noqa: E402

from factorcl_hf.data.shapes import write_shapes_imagefolder  # noqa: E402
from factorcl_hf.offline import build_caption_tokenizer, special_token_ids, tiny_clip_config  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny tensors: a second intra-op thread only adds synchronisation (and on a
    shared 2-core machine, waiting); restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)



@pytest.fixture(scope="module")
def tokenizer(request):
    """A caption tokenizer whose vocabulary holds every word of the test module's CAPTIONS."""
    return build_caption_tokenizer(request.module.CAPTIONS)


@pytest.fixture(scope="module")
def clip_config(tokenizer):
    return tiny_clip_config(len(tokenizer), **special_token_ids(tokenizer))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """24 embedded shapes pairs, half of them in the test split, 32 px."""
    return write_shapes_imagefolder(tmp_path_factory.mktemp("shapes"), num_samples=24, test_fraction=0.5, image_size=32)


# Eight captions and eight distinct noise images (no two score alike, so every top-k is one
# ranking): what the integrations' tests (sentence-transformers, vector stores, the app, the
# card's snippets) embed and search with a saved tiny model.
PHOTO_CAPTIONS = [
    "a small red circle at the top", "a large blue square at the bottom", "a green cross on the left",
    "a small yellow triangle on the right", "a large red square in the middle", "a blue circle at the bottom",
    "a green triangle at the top", "a yellow cross in the middle",
]


@pytest.fixture(scope="session")
def photo_index(tmp_path_factory):
    """A saved tiny model (``model_dir``, ``model``, ``processor``), a folder of eight noise
    images (``images``), its ``factorcl-embed`` Parquet index (``index``: pooler, shared,
    unique) and the ``captions`` the tokenizer knows."""
    from types import SimpleNamespace

    from factorcl_hf.apps.embed import run_embed
    from factorcl_hf.testing_utils import random_images, save_tiny_model

    root = tmp_path_factory.mktemp("photo_index")
    model, processor = save_tiny_model(root / "model", PHOTO_CAPTIONS, head_dim=8, head_hidden_dim=16,
                                       critic_hidden_dim=16, critic_embed_dim=8)
    images = root / "photos"
    images.mkdir()
    for i, image in enumerate(random_images(8, size=40, seed=1)):
        image.save(images / f"photo_{i}.png")
    index = root / "photos.parquet"
    run_embed(["--model", str(root / "model"), "--images", str(images), "--out", str(index),
               "--embedding", "pooler", "shared", "unique", "--no-progress"])
    return SimpleNamespace(model_dir=root / "model", model=model, processor=processor, images=images, index=index,
                           captions=list(PHOTO_CAPTIONS))
