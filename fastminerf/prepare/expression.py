"""The expression space shared by every identity prepared into one output folder.

A frame's expression is the non-rigid part of its landmarks: the frame aligned to the person's own neutral face
(pose and scale removed, :func:`fastminerf.prepare.pose.identity_neutral`) minus that neutral face. One linear
basis, fitted across all the videos prepared together (uncentred PCA, so that the coefficients of a neutral face
are zero; each video weighs the same however long it is), maps these deformations to ``E`` coefficients. Every
identity lives in the same coefficient space, so an expression transfers between people.

The basis is stored in the output folder as :data:`BASIS_FILE` together with the canonical face and the stable
landmarks, and reused by later prepares into the same folder (new identities join the same space, e.g. for
personalisation of a trained model), or into another folder given the file (``--basis``). Its
:attr:`ExpressionBasis.space_id`, a hash of its contents, is written into every transforms file as
``expression_space``: data, checkpoints and drivers in different spaces are refused instead of mixed.

Dimension letters: B frames, K landmarks, S stable landmarks, E expression size.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np

from ..data.layout import NPZ_ERRORS, npz_error_reason
from ..data.writer import errors_naming, remove_killed_writes, write_id
from .pose import FRAME_CHUNK, evenly_spaced

__all__ = ["BASIS_FILE", "ExpressionBasis", "fit_basis"]

PathLike = Union[str, Path]

BASIS_FILE = "expression_basis.npz"
"""File in the output root holding the shared face model (canonical face, stable landmarks, expression basis)."""

BASIS_FORMAT = 1
"""Version of :data:`BASIS_FILE`'s contents."""

FIT_FRAMES_PER_VIDEO = 400
"""Frames per video (evenly spread) used to fit the basis."""

MIN_SCALE = 1e-6
"""Smallest :attr:`ExpressionBasis.scale`, head units (real clips give 0.1 to 0.2). Frames in which the face never
moves (a still photo as a video) have no deformation beyond rounding: dividing by their first coefficient's spread
would give NaN, or coefficients of order 1e12 for every identity that later joins the stored basis, so the scale is
then 1 (coefficients are the projections themselves)."""


@dataclass(frozen=True)
class ExpressionBasis:
    """The shared face model: canonical face, stable landmarks and expression basis."""

    canonical: np.ndarray
    """(K, 3) float64 canonical face in head space (sets the head frame and scale of every identity)."""
    stable: np.ndarray
    """(S,) int64 landmarks used for rigid alignment."""
    components: np.ndarray
    """(E, K * 3) float64 orthonormal deformation directions, most variance first."""
    scale: float
    """Coefficients are projections divided by this: the standard deviation of the first one over the fitted
    frames, so that the coefficients are of order 1 (1 when the fitted frames hold no deformation,
    :data:`MIN_SCALE`)."""
    explained: np.ndarray
    """(E,) float64 share of the deformation energy each component explains on the fitted frames."""
    face_height: float
    """Forehead-to-chin height of the canonical face, head units."""
    fitted_on: Tuple[str, ...] = ()
    """Names of the videos (identities) it was fitted on; () when unknown (a file written before this was kept).
    Not part of :attr:`space_id`."""

    @property
    def dim(self) -> int:
        """E."""
        return int(self.components.shape[0])

    @property
    def names(self) -> List[str]:
        """``expression_names`` of the layout: ``pca00``, ``pca01``, ..."""
        return [f"pca{i:02d}" for i in range(self.dim)]

    @property
    def space_id(self) -> str:
        """``pca<E>-<12 hex digits>``: the expression space these coefficients are in, a SHA-256 of everything that
        maps landmarks to coefficients (canonical face, stable landmarks, components, scale). Two bases fitted on
        different videos get different ids; the same file always the same."""
        h = hashlib.sha256()
        for a in (self.canonical, self.stable, self.components, np.float64(self.scale)):
            h.update(np.ascontiguousarray(a, dtype=np.int64 if a is self.stable else np.float64).tobytes())
        return f"pca{self.dim}-{h.hexdigest()[:12]}"

    def coefficients(self, aligned: np.ndarray, neutral: np.ndarray) -> np.ndarray:
        """Expression ``(B, E)`` float64 of aligned frames ``(B, K, 3)`` relative to a neutral face ``(K, 3)``."""
        out = np.empty((len(aligned), self.dim), dtype=np.float64)
        for s in range(0, len(out), FRAME_CHUNK):  # a chunk at a time: the difference is a copy of the frames
            d = np.asarray(aligned[s:s + FRAME_CHUNK], dtype=np.float64) - neutral
            out[s:s + FRAME_CHUNK] = d.reshape(len(d), -1) @ self.components.T / self.scale
        return out

    def deformation(self, coefficients: np.ndarray) -> np.ndarray:
        """Landmark offsets ``(B, K, 3)`` of coefficients ``(B, E)`` (the inverse of :meth:`coefficients` on the
        basis' span)."""
        c = np.asarray(coefficients, dtype=np.float64)
        return (c * self.scale @ self.components).reshape(len(c), -1, 3)

    def save(self, root: PathLike, exclusive: bool = False) -> Path:
        """Write ``root/expression_basis.npz`` atomically (through a temporary file of this write's own,
        :func:`~fastminerf.data.writer.write_id`).

        ``exclusive``: only where none is: :class:`FileExistsError` when the root holds one already, also one that
        another prepare into the same root (a thread, a job of an array) saved since this one looked, which is then
        left as it is (one root holds one expression space)."""
        path = Path(root) / BASIS_FILE
        tmp = path.with_name(f"{path.stem}.{write_id()}.tmp.npz")
        try:
            with errors_naming(path, tmp):  # a full disk: the basis named, not its temporary file or none
                np.savez(tmp, format=BASIS_FORMAT, canonical=self.canonical, stable=self.stable,
                         components=self.components, scale=self.scale, explained=self.explained,
                         face_height=self.face_height, fitted_on=np.array(self.fitted_on, dtype=str))
            if not exclusive:
                os.replace(tmp, path)
                return path
            try:
                os.link(tmp, path)  # atomic, and refused (FileExistsError) when the name exists
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: replace, unless one appeared
                if path.exists():
                    raise FileExistsError(f"{path} exists") from None
                os.replace(tmp, path)
            return path
        finally:
            tmp.unlink(missing_ok=True)  # linked, or left by an error or an interruption
            remove_killed_writes(path.parent, f"{path.stem}.", ".tmp.npz")  # and what killed saves left

    @classmethod
    def load(cls, root: PathLike) -> "ExpressionBasis":
        """Read ``root/expression_basis.npz`` when ``root`` is a folder, else ``root`` itself (a missing path is named
        as given); ``ValueError`` naming the file when it is not one of ours."""
        path = Path(root) / BASIS_FILE if Path(root).is_dir() else Path(root)
        try:
            with np.load(path) as z:
                if int(z["format"]) != BASIS_FORMAT:
                    raise ValueError(f"{path}: format {int(z['format'])}, this fastminerf reads {BASIS_FORMAT}")
                return cls(z["canonical"], z["stable"].astype(np.int64), z["components"], float(z["scale"]),
                           z["explained"], float(z["face_height"]),
                           tuple(str(n) for n in z["fitted_on"]) if "fitted_on" in z.files else ())
        except (KeyError,) + NPZ_ERRORS as exc:
            raise ValueError(f"{path}: not a readable expression basis ({npz_error_reason(exc)})") from None


def fit_basis(deformations: Sequence[np.ndarray], dim: int) -> Tuple[np.ndarray, float, np.ndarray]:
    """Uncentred PCA of landmark deformations, each video weighing the same.

    Args:
        deformations: per video, ``(B_i, K, 3)`` aligned frames minus that person's neutral face.
        dim: E, components kept (at most the number of frames used).

    Returns:
        ``components (E, K * 3)``, ``scale`` (standard deviation of the first coefficient) and ``explained (E,)``.
    """
    if dim < 1:
        raise ValueError(f"expression_dim must be >= 1, got {dim}")
    rows = []
    for d in deformations:
        pick = evenly_spaced(len(d), FIT_FRAMES_PER_VIDEO)
        rows.append(d[pick].reshape(len(pick), -1) / np.sqrt(len(pick)))
    mat = np.concatenate(rows)
    _, sig, vt = np.linalg.svd(mat, full_matrices=False)
    e = min(dim, vt.shape[0])
    if e < dim:
        raise ValueError(f"expression_dim {dim} needs at least {dim} frames to fit the basis; got {vt.shape[0]}")
    energy = sig**2
    components = vt[:e]
    # Sign convention: each component's largest entry positive (a basis fitted twice gives the same signs).
    big = np.argmax(np.abs(components), axis=1)
    components = components * np.sign(components[np.arange(e), big])[:, None]
    scale = float(sig[0] / np.sqrt(len(deformations)))  # weighted RMS of the first coefficient
    if not scale >= MIN_SCALE:
        scale = 1.0
    total = energy.sum()
    return components, scale, energy[:e] / total if total > 0 else np.zeros(e)
