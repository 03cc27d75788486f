"""``factorcl-app``: search a folder of images by text or by an example image, and classify an
image zero-shot, with a saved FactorCL model, in a Gradio app.

    factorcl-app --model outputs/demo/factorcl_ssl/model --images photos/

The folder is embedded once, when the first page loads (a progress bar shows it), with every
embedding the model has. A search ranks as ``factorcl-search`` does (``apps.search.search_scores``):
with the ``pooler`` embedding a text query scores the images with the model's alignment critic;
every other pair is scored by cosine. ``shared`` embeddings of a text and an image are comparable
(both heads are trained across modalities); ``unique`` and ``factorized`` ones are not, so they
search by an example image only ("more with this colour" rather than "this shape").

The same file is a Hugging Face Space's ``app.py``: a Space holding it, a ``requirements.txt``
with ``factorcl-hf[app]``, the saved model in ``model/`` and the pictures in ``images/`` runs
``python app.py``, which reads ``FACTORCL_MODEL`` / ``FACTORCL_IMAGES`` (defaults ``model`` and
``images``); Gradio binds the address and port the Space sets (``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT``). Its imports are absolute for that reason.
"""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path

# Gradio reports usage to its servers unless told not to; an app over private pictures should not.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402
from transformers import AutoModel, AutoProcessor  # noqa: E402

from factorcl_hf.apps.embed import image_files  # noqa: E402
from factorcl_hf.apps.search import search_scores  # noqa: E402
from factorcl_hf.evaluation.embed import available_embeddings, embed_image_files, extract_embeddings, load_image  # noqa: E402
from factorcl_hf.evaluation.zero_shot import class_prompt_embeddings, zero_shot_logits  # noqa: E402
from factorcl_hf.hub import class_names  # noqa: E402
from factorcl_hf.integrity import check_model_path  # noqa: E402
from factorcl_hf.progress import hide_library_progress_bars  # noqa: E402

INSTALL_HINT = 'pip install "factorcl-hf[app]"'
SEARCH_EMBEDDINGS = ("pooler", "shared", "unique", "factorized")
# What a text query can be compared with: the embeddings trained across modalities.
TEXT_EMBEDDINGS = ("pooler", "shared")
DEFAULT_TEMPLATE = "a photo of a {}."


class ImageIndex:
    """A folder's images and their embeddings, computed once (thread-safe: Gradio serves events
    in worker threads, and a search may arrive before the first page load finished indexing)."""

    def __init__(self, model, processor, folder: str | os.PathLike, batch_size: int = 32):
        self.model, self.processor, self.folder = model, processor, Path(folder)
        self.paths = image_files(self.folder)
        self.names = tuple(name for name in SEARCH_EMBEDDINGS if name in available_embeddings(model))
        self.batch_size = batch_size
        self.embeddings: dict[str, torch.Tensor] | None = None
        self.kept: list[Path] = []
        self._lock = threading.Lock()

    def build(self) -> str:
        """Embed the folder (once; tqdm progress, which Gradio's ``track_tqdm`` shows); a status line."""
        with self._lock:
            if self.embeddings is None:
                self.embeddings, kept = embed_image_files(self.model, self.processor, self.paths, self.names,
                                                          batch_size=self.batch_size, progress=True)
                self.kept = [self.paths[i] for i in kept]
        skipped = len(self.paths) - len(self.kept)
        return f"Indexed {len(self.kept)} images from `{self.folder}`" + (f" ({skipped} could not be read)" if skipped else "")

    def search(self, text: str | None, image, embedding: str, top_k: int) -> list[tuple[Path, float]]:
        """The ``top_k`` images for a text or an example image (the image wins when both are given)."""
        self.build()
        if embedding not in self.names:
            raise ValueError(f"embedding {embedding!r} is not one of this model's: {', '.join(self.names)}")
        if image is not None:
            query, modality = load_image(image), "image"
        elif text and text.strip():
            query, modality = text.strip(), "text"
            if embedding not in TEXT_EMBEDDINGS:
                raise ValueError(f"a text cannot be compared with {embedding!r} image embeddings (they hold what only "
                                 f"images carry): search by an example image, or use {' or '.join(TEXT_EMBEDDINGS)}")
        else:
            raise ValueError("type a query or drop an example image")
        query_embeds = extract_embeddings(self.model, self.processor, [query], modality, embedding)[embedding]
        critic = self.model.objective.alignment_critic if embedding == "pooler" else None
        scores = search_scores(query_embeds, modality, self.embeddings[embedding], "image", critic)
        top = scores.topk(min(int(top_k), len(self.kept)))
        return [(self.kept[i], score) for i, score in zip(top.indices.tolist(), top.values.tolist())]

    def classify(self, image, names: str, template: str) -> dict[str, float]:
        """Zero-shot class probabilities of ``image`` for comma-separated class ``names``."""
        labels = [name.strip() for name in names.split(",") if name.strip()]
        prompts = class_prompt_embeddings(self.model, self.processor, labels, [template])
        image_embeds = extract_embeddings(self.model, self.processor, [load_image(image)], "image")["pooler"]
        logits = zero_shot_logits(image_embeds, prompts, self.model.objective.alignment_critic)
        return dict(zip(labels, logits.softmax(dim=-1)[0].tolist()))


def build_app(index: ImageIndex, title: str = "FactorCL image search"):
    """The Gradio ``Blocks``: a search tab and a zero-shot tab (API names ``search``, ``classify``)."""
    gr = import_gradio()

    def on_load(progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's way to ask for a bar)
        return index.build()

    def on_search(text, image, embedding, top_k, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        try:
            hits = index.search(text, image, embedding, top_k)
        except ValueError as error:
            raise gr.Error(str(error)) from error
        rows = [[rank, path.relative_to(index.folder).as_posix(), round(score, 4)] for rank, (path, score) in enumerate(hits, 1)]
        return [(str(path), f"{score:.3f}") for path, score in hits], rows

    def on_classify(image, names, template):
        if image is None:
            raise gr.Error("drop an image to classify")
        try:
            return index.classify(image, names, template)
        except ValueError as error:
            raise gr.Error(str(error)) from error

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nModel `{index.model.name_or_path}` · folder `{index.folder}`")
        status = gr.Markdown("Indexing the folder…", elem_id="status")
        with gr.Tab("Search"):
            with gr.Row():
                text = gr.Textbox(label="Text query", placeholder="a red circle at the top", elem_id="query")
                image = gr.Image(type="pil", label="…or an example image", sources=["upload", "clipboard"], height=160)
            with gr.Row():
                embedding = gr.Radio(list(index.names), value="pooler", label="Embedding", elem_id="embedding")
                top_k = gr.Slider(1, max(1, min(50, len(index.paths))), value=min(8, len(index.paths)), step=1, label="Results")
            button = gr.Button("Search", variant="primary", elem_id="search")
            gallery = gr.Gallery(label="Best matches", columns=4, height="auto", elem_id="gallery")
            table = gr.Dataframe(headers=["rank", "image", "score"], label="Scores", elem_id="scores")
            button.click(on_search, [text, image, embedding, top_k], [gallery, table], api_name="search")
            text.submit(on_search, [text, image, embedding, top_k], [gallery, table], api_name=False)
        with gr.Tab("Zero-shot classification"):
            with gr.Row():
                picture = gr.Image(type="pil", label="Image", height=200)
                with gr.Column():
                    names = gr.Textbox(label="Class names (comma-separated)", value=", ".join(class_names(index.model) or []))
                    template = gr.Textbox(label="Prompt template ({} is the class name)", value=DEFAULT_TEMPLATE)
                    classify = gr.Button("Classify", variant="primary")
            scores = gr.Label(label="Class probabilities")
            classify.click(on_classify, [picture, names, template], scores, api_name="classify")
        app.load(on_load, None, status, show_progress="full")
    return app


def import_gradio():
    try:
        import gradio
    except ModuleNotFoundError as error:
        raise SystemExit(f"factorcl-app needs gradio: {INSTALL_HINT}") from error
    return gradio


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factorcl-app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("FACTORCL_MODEL", "model"),
                        help="saved FactorCL model directory (with its processor) or Hub id (default: $FACTORCL_MODEL or 'model')")
    parser.add_argument("--images", default=os.environ.get("FACTORCL_IMAGES", "images"),
                        help="folder of images to search, searched recursively (default: $FACTORCL_IMAGES or 'images')")
    parser.add_argument("--host", default=None, help="address to serve on (default: Gradio's, $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: cuda if available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``factorcl-app``): serves until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import_gradio()  # the install command before the model loads
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        check_model_path(args.model)
        hide_library_progress_bars(keep_downloads=True)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModel.from_pretrained(args.model).to(device).eval()
        index = ImageIndex(model, AutoProcessor.from_pretrained(args.model), args.images, args.batch_size)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    build_app(index).launch(server_name=args.host, server_port=args.port, allowed_paths=[str(index.folder.resolve())])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
