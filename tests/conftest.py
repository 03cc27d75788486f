import os

# No network here: make every Hub lookup fail fast instead of retrying for ~20 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny tensors: a second intra-op thread only adds synchronisation (and on a
    shared 2-core machine, waiting); restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


from factorcl_hf.data.shapes import write_shapes_imagefolder  # noqa: E402
from factorcl_hf.testing_utils import build_caption_tokenizer, special_token_ids, tiny_clip_config  # noqa: E402


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
