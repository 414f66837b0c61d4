"""Face analysis errors, each naming the problem and what the user can do about it."""

from __future__ import annotations

from ..errors import IPAdapterError


class FaceAnalysisError(IPAdapterError):
    """Base class of the face analysis errors (FaceID needs a face to be found and embedded)."""


class FaceRuntimeMissingError(FaceAnalysisError):
    """onnxruntime, which runs the face models, is not installed."""


class FaceModelMissingError(FaceAnalysisError):
    """The face model pack (or one of its files) is not where it was looked for."""


class FaceModelError(FaceAnalysisError):
    """A face model file cannot be read or is not the kind of model it should be."""


class FaceInputError(FaceAnalysisError):
    """An image or landmark array the face code cannot work with."""


class NoFaceError(FaceAnalysisError):
    """The face detector found no face in a reference image."""
