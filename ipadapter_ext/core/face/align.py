"""Five-point face alignment: the crop ArcFace and the FaceID-Plus CLIP encoder were trained on.

The landmarks (eyes, nose tip, mouth corners) are mapped onto a fixed template by the
least-squares similarity transform (rotation, uniform scale, translation; Umeyama 1991), and the
image is warped with it. The template is ArcFace's 112-pixel one; for other sizes it is scaled
by ``size / 112`` when ``size`` is a multiple of 112 (224 for FaceID-Plus), or by ``size / 128``
with an 8·scale horizontal shift when it is a multiple of 128 (256 for SDXL-era nodes): the same
rule as insightface's ``estimate_norm``, so crops equal ``norm_crop`` for the same landmarks.

Computations keep the landmarks' dtype (float32 from the detector), like the reference
implementation: the warp quantises coordinates to 1/32 pixel, and a float64 transform would move
a few of them across a quantisation step.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .errors import FaceInputError
from .images import to_rgb_array
from .imaging import warp_affine

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def template_for(size: int) -> np.ndarray:
    """The five target points for a ``size``×``size`` crop."""
    if size % 112 == 0:
        points = ARCFACE_TEMPLATE * (size / 112.0)
    elif size % 128 == 0:
        ratio = size / 128.0
        points = ARCFACE_TEMPLATE * ratio
        points[:, 0] += 8.0 * ratio
    else:
        raise FaceInputError(f"Aligned face crops exist for sizes that are multiples of 112 or 128, not {size}.")
    return points


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3×3 matrix of the similarity transform that best maps ``src`` onto ``dst`` (least squares).

    Umeyama's closed form: the rotation comes from the SVD of the cross-covariance, with a
    reflection excluded by the determinant sign, and the scale from the singular values over the
    source variance.
    """
    src = np.asarray(src)
    dst = np.asarray(dst)
    n, dim = src.shape
    src_c = src - src.mean(axis=0)
    dst_c = dst - dst.mean(axis=0)
    cov = dst_c.T @ src_c / n
    signs = np.ones(dim, dtype=np.float64)
    if np.linalg.det(cov) < 0:
        signs[-1] = -1.0
    u, sing, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    out = np.eye(dim + 1, dtype=np.float64)
    if rank == 0:
        return out * np.nan
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:
        rot = u @ vt
    elif rank == dim - 1:
        flip = signs.copy()
        flip[-1] = -1.0
        rot = u @ np.diag(flip) @ vt
    else:
        rot = u @ np.diag(signs) @ vt
    # Same operation order and dtypes as the reference: the result feeds a quantising warp.
    scale = 1.0 / src_c.var(axis=0).sum() * (sing @ signs)
    out[:dim, :dim] = rot
    out[:dim, dim] = dst.mean(axis=0) - scale * (out[:dim, :dim] @ src.mean(axis=0).T)
    out[:dim, :dim] *= scale
    return out


def alignment_matrix(kps: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2×3 forward matrix taking image coordinates to the aligned ``size`` crop."""
    kps = np.asarray(kps)
    if kps.shape != (5, 2):
        raise FaceInputError(f"Face alignment needs 5 landmarks as a (5, 2) array, got shape {kps.shape}.")
    return similarity_transform(kps, template_for(size))[:2, :]


def align_array(image: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """Aligned ``size``×``size`` crop of an (H, W, C) uint8 array; outside pixels are black."""
    return warp_affine(image, alignment_matrix(kps, size), (size, size))


def align(image, kps: np.ndarray, size: int = 112) -> Image.Image:
    """Aligned RGB crop of ``image`` (PIL image or RGB uint8 array) for landmarks ``kps``.

    112 is ArcFace's input; 224 (FaceID-Plus) and 256 (SDXL-era FaceID-Plus nodes) feed CLIP.
    """
    return Image.fromarray(align_array(to_rgb_array(image), kps, size), "RGB")
