"""A saved folder as a sentence-transformers model: the files save_pretrained writes, the module
in this interpreter, and `SentenceTransformer(DIR, trust_remote_code=True)` in a fresh one
where factorcl_hf cannot be imported."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from factorcl_hf.apps.search import run_search
from factorcl_hf.sentence_transformers_module import FactorCLSentenceTransformer
from factorcl_hf.testing_utils import random_images, save_tiny_model


def image_paths(photo_index):
    return sorted(photo_index.images.iterdir())


def expected(photo_index, field):
    """``{modality: normalised field}`` of the photos and captions, from the model itself."""
    model, processor = photo_index.model, photo_index.processor
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in image_paths(photo_index)]
    inputs = processor(text=photo_index.captions, images=images, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        image = getattr(model.get_image_features(pixel_values=inputs["pixel_values"]), field)
        text = getattr(model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]), field)
    return {"image": F.normalize(image, dim=-1), "text": F.normalize(text, dim=-1)}


def test_save_pretrained_writes_a_sentence_transformers_folder(photo_index):
    folder = photo_index.model_dir
    modules = json.loads((folder / "modules.json").read_text())
    assert modules == [{"idx": 0, "name": "0", "path": "", "kwargs": ["embedding"],
                        "type": "sentence_transformers_module.FactorCLSentenceTransformer"}]
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "cosine"
    # The module file is the model code's relative import, so transformers saved it with the code.
    assert "from .sentence_transformers_module import" in (folder / "modeling_factorcl.py").read_text()
    assert (folder / "sentence_transformers_module.py").is_file()


def test_the_module_encodes_as_the_model_does(photo_index):
    module = FactorCLSentenceTransformer.load(str(photo_index.model_dir))
    from PIL import Image

    images = [Image.open(path) for path in image_paths(photo_index)]
    for field, name in (("pooler_output", None), ("shared_embeds", "shared"), ("unique_embeds", "unique")):
        want = expected(photo_index, field)
        with torch.no_grad():
            got_image = module(module.preprocess(images), embedding=name)["sentence_embedding"]
            got_text = module(module.preprocess(photo_index.captions), embedding=name)["sentence_embedding"]
        torch.testing.assert_close(got_image, want["image"], rtol=0, atol=1e-5)
        torch.testing.assert_close(got_text, want["text"], rtol=0, atol=1e-5)
    assert module.get_embedding_dimension() == expected(photo_index, "pooler_output")["text"].shape[1]


def test_the_module_refuses_what_it_cannot_encode(photo_index, tmp_path):
    module = FactorCLSentenceTransformer.load(str(photo_index.model_dir))
    with pytest.raises(ValueError, match="`embedding` must be one of"):
        module(module.preprocess(["a red circle"]), embedding="colour")
    with pytest.raises(ValueError, match="one kind of input per call"):
        module.preprocess(["a red circle", random_images(1)[0]])
    simclr = tmp_path / "simclr"
    save_tiny_model(simclr, ["a red circle"], objective="simclr", head_dim=8, head_hidden_dim=16)
    simclr_module = FactorCLSentenceTransformer.load(str(simclr))
    with pytest.raises(ValueError, match="`embedding='unique'` is not available: objective 'simclr'"):
        simclr_module(simclr_module.preprocess(["a red circle"]), embedding="unique")
    bare = tmp_path / "no_processor"
    photo_index.model.save_pretrained(bare)
    with pytest.raises(ValueError, match="has no processor: save it beside the model"):
        FactorCLSentenceTransformer.load(str(bare))


FRESH_SCRIPT = r"""
import json, sys
# An environment without factorcl-hf (the editable install puts it on every path): importing it fails.
sys.modules["factorcl_hf"] = None
from PIL import Image
from sentence_transformers import SentenceTransformer, util

folder, images_json, captions_json, out_path = sys.argv[1:5]
paths, captions = json.loads(images_json), json.loads(captions_json)
model = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
assert sys.modules["factorcl_hf"] is None, "the remote code must not import the package"
images = model.encode([Image.open(path) for path in paths], convert_to_tensor=True)
texts = model.encode(captions, convert_to_tensor=True)
shared = model.encode(captions, convert_to_tensor=True, embedding="shared")
hits = util.semantic_search(texts, images, top_k=5)
# sentence-transformers' own save: the module saves the model (and so its files) again.
model.save(out_path + ".saved")
again = SentenceTransformer(out_path + ".saved", trust_remote_code=True, device="cpu").encode(captions, convert_to_tensor=True)
json.dump({"image": images.tolist(), "text": texts.tolist(), "shared": shared.tolist(), "again": again.tolist(),
           "top5": [[hit["corpus_id"] for hit in query] for query in hits]}, open(out_path, "w"))
"""


@pytest.mark.slow
def test_sentence_transformers_loads_the_folder_where_the_package_is_absent(photo_index, tmp_path):
    paths = [str(path) for path in image_paths(photo_index)]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    # -I: isolated mode (no PYTHONPATH, no cwd or script dir on sys.path); cwd has no package.
    completed = subprocess.run(
        [sys.executable, "-I", "-c", FRESH_SCRIPT, str(photo_index.model_dir), json.dumps(paths),
         json.dumps(photo_index.captions), str(tmp_path / "out.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    fresh = json.loads((tmp_path / "out.json").read_text())
    pooler, shared = expected(photo_index, "pooler_output"), expected(photo_index, "shared_embeds")
    torch.testing.assert_close(torch.tensor(fresh["image"]), pooler["image"], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(fresh["text"]), pooler["text"], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(fresh["shared"]), shared["text"], rtol=0, atol=1e-5)
    assert fresh["again"] == fresh["text"]
    names = [path.name for path in image_paths(photo_index)]
    for caption, top5 in zip(photo_index.captions, fresh["top5"]):
        searched = run_search(["--index", str(photo_index.index), "--model", str(photo_index.model_dir),
                               "--query", caption, "--top-k", "5"])
        assert [names[i] for i in top5] == [item for item, _ in searched], caption


def test_a_trained_alignment_critic_is_announced_at_load(tmp_path, caplog):
    # Cosine similarity (sentence-transformers' ranking) is what a cosine critic ranks with; a
    # trained concat critic ranks otherwise, and the user is told so.
    save_tiny_model(tmp_path, ["a red circle"], alignment_critic_type="concat", head_dim=8, head_hidden_dim=16,
                    critic_hidden_dim=16, critic_embed_dim=8)
    with caplog.at_level("WARNING"):
        FactorCLSentenceTransformer.load(str(tmp_path))
    assert "trained 'concat' alignment critic" in caplog.text
