"""Face analysis for the FaceID adapters, on onnxruntime alone (no insightface, no OpenCV).

Equal to insightface's ``FaceAnalysis`` with the ``buffalo_l`` pack (SCRFD detector + ArcFace
recogniser) on the same pixels, plus retries for faces that fill the frame. onnxruntime is
imported when the first model is loaded, never at import.

    pack = find_pack([models_dir, controlnet_models_dir])      # FaceModelMissingError if absent
    analyser = FaceAnalyser(pack, sessions=engine_session_cache)
    face = analyser.largest(pil_image)                          # NoFaceError if none
    face.normed_embedding                                       # (512,) float32
    crop = align(pil_image, face.kps, 224)                      # FaceID-Plus CLIP input
"""

from .align import align, align_array, alignment_matrix
from .analyser import NO_FACE_MESSAGE, DetectAttempt, Face, FaceAnalyser, analyser_for, retry_schedule
from .errors import (
    FaceAnalysisError,
    FaceInputError,
    FaceModelError,
    FaceModelMissingError,
    FaceRuntimeMissingError,
    NoFaceError,
)
from .pack import DEFAULT_PACK, FacePack, find_pack, load_pack
from .runtime import SessionCache

__all__ = [
    "DEFAULT_PACK",
    "NO_FACE_MESSAGE",
    "DetectAttempt",
    "Face",
    "FaceAnalyser",
    "FaceAnalysisError",
    "FaceInputError",
    "FaceModelError",
    "FaceModelMissingError",
    "FacePack",
    "FaceRuntimeMissingError",
    "NoFaceError",
    "SessionCache",
    "align",
    "align_array",
    "alignment_matrix",
    "analyser_for",
    "find_pack",
    "load_pack",
    "retry_schedule",
]
