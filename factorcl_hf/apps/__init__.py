"""What users run over a saved model: ``factorcl-embed`` (:mod:`.embed`: embeddings of images,
texts or a dataset, written to Parquet / ``.npy`` with the model's identity, optionally a FAISS
index) and ``factorcl-search`` (:mod:`.search`: a query over them). The Gradio retrieval app,
``factorcl-app``, is ``factorcl_hf/app.py`` (also a Space's ``app.py``), built on the same two."""
