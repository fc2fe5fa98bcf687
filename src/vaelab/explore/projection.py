"""The map's 2-D view of the codes, and the way back from a spot on it to a code.

``make_projection(name, codes, seed)`` returns a ``Projection`` with
``points`` (N, 2), ``to_code(point)`` (a spot on the map -> the code it stands for)
and ``place(code)`` (a new code, such as an uploaded image's -> a spot on the map):

- ``identity``: 1-D and 2-D codes are drawn as they are (1-D: spread vertically);
- ``pca``: the first two principal components; a spot maps back to its inverse
  projection plus the mean (the rest of the code is the data's mean);
- ``tsne`` / ``umap``: no inverse exists, so a spot stands for the code of the image
  drawn nearest to it, and a new code is placed on its nearest neighbour's point.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vaelab.errors import ConfigError, VaelabError

UMAP_MISSING = ("--projection umap needs umap-learn, which is not installed: pip install umap-learn "
                "(or use --projection pca or tsne)")


class Projection:
    name = ""
    exact = True  # whether to_code(points[i]) returns codes[i] (or its projection) exactly
    note = ""

    def __init__(self, codes: np.ndarray, points: np.ndarray):
        self.codes = codes  # (N, D) float64
        self.points = points  # (N, 2) float64

    def nearest_point(self, point: np.ndarray) -> int:
        """The index of the map point closest to ``point`` (2,)."""
        return int(np.argmin(((self.points - point) ** 2).sum(1)))

    def nearest_code(self, code: np.ndarray) -> int:
        return int(np.argmin(((self.codes - code) ** 2).sum(1)))

    def to_code(self, point: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def place(self, code: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Identity(Projection):
    name = "identity"

    def __init__(self, codes: np.ndarray, seed: int = 0):
        d = codes.shape[1]
        if d == 2:
            points = codes.copy()
            self.note = "The latent space is 2-D: the map is the code itself."
        else:  # 1-D: the code on x, a seeded jitter on y so that points do not hide each other
            jitter = np.random.default_rng(seed).uniform(-1, 1, len(codes)) * max(codes.std(), 1e-3)
            points = np.stack([codes[:, 0], jitter], 1)
            self.note = "The latent space is 1-D: x is the code; points are spread vertically only to be seen."
        super().__init__(codes, points)

    def to_code(self, point):
        return np.asarray(point[: self.codes.shape[1]], dtype=np.float64)

    def place(self, code):
        return np.array([code[0], code[1] if len(code) > 1 else 0.0])


class PCA(Projection):
    """The first two principal components; a spot decodes its inverse projection plus the mean."""

    name = "pca"

    def __init__(self, codes: np.ndarray, seed: int = 0):
        from sklearn.decomposition import PCA as SkPCA

        self.pca = SkPCA(n_components=2, random_state=seed).fit(codes)
        share = float(self.pca.explained_variance_ratio_.sum())
        self.note = (f"PCA of the codes (the two axes hold {share:.0%} of their variance). A spot on the map "
                     "decodes its inverse projection plus the mean.")
        super().__init__(codes, self.pca.transform(codes))

    def to_code(self, point):
        # inverse_transform = point @ components_ + mean_ (no whitening)
        return self.pca.inverse_transform(np.asarray(point, dtype=np.float64)[None])[0]

    def place(self, code):
        return self.pca.transform(np.asarray(code, dtype=np.float64)[None])[0]


class Nearest(Projection):
    """t-SNE or UMAP: the map has no inverse; the nearest image's code stands in."""

    exact = False

    def __init__(self, name: str, codes: np.ndarray, points: np.ndarray):
        self.name = name
        label = {"tsne": "t-SNE", "umap": "UMAP"}[name]
        self.note = (f"{label} of the codes. {label} has no inverse: a spot on the map decodes the code of the "
                     "image nearest to it, and an uploaded image is placed on its nearest neighbour's point.")
        super().__init__(codes, points)

    def to_code(self, point):
        return self.codes[self.nearest_point(np.asarray(point, dtype=np.float64))]

    def place(self, code):
        return self.points[self.nearest_code(np.asarray(code, dtype=np.float64))]


def tsne(codes: np.ndarray, seed: int = 0) -> Projection:
    """t-SNE (scikit-learn); no inverse: a spot decodes the code of the image nearest to it."""
    from sklearn.manifold import TSNE

    # perplexity must stay below the number of points (a small split of a tiny run)
    perplexity = float(min(30.0, max(1.0, (len(codes) - 1) / 3)))
    points = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(codes)
    return Nearest("tsne", codes, np.asarray(points, dtype=np.float64))


def umap(codes: np.ndarray, seed: int = 0) -> Projection:
    """UMAP (needs umap-learn); no inverse: a spot decodes the code of the image nearest to it."""
    try:
        import umap as umap_learn
    except ImportError:
        raise VaelabError(UMAP_MISSING) from None
    points = umap_learn.UMAP(n_components=2, random_state=seed).fit_transform(codes)
    return Nearest("umap", codes, np.asarray(points, dtype=np.float64))


# Registry: --projection -> (codes (N, D), seed) -> Projection, for codes of more than 2 dimensions.
PROJECTIONS: dict[str, Callable[[np.ndarray, int], Projection]] = {"pca": PCA, "tsne": tsne, "umap": umap}


def check_projection(name: str) -> None:
    """Refuse an unknown name, or umap without umap-learn, before any work is done."""
    if name not in PROJECTIONS:
        raise ConfigError(f"unknown projection {name!r}; choose one of {', '.join(PROJECTIONS)}")
    if name == "umap":
        try:
            import umap as umap_learn  # noqa: F401
        except ImportError:
            raise VaelabError(UMAP_MISSING) from None


def make_projection(name: str, codes: np.ndarray, seed: int = 0) -> Projection:
    """The map of ``codes`` (N, D): drawn as they are for D <= 2, else by ``name``."""
    check_projection(name)
    codes = np.asarray(codes, dtype=np.float64)
    if codes.shape[1] <= 2:
        return Identity(codes, seed)
    if len(codes) < 3:
        raise ConfigError(f"the map needs at least 3 images to project {codes.shape[1]}-D codes; got {len(codes)}")
    return PROJECTIONS[name](codes, seed)
