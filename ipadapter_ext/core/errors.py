"""Errors a user can act on.

Every error raised by the core names the problem in words and says what to do about it. The host
turns them into messages in the UI or the API response; none of them should ever surface as a
tensor shape error deep inside sampling.
"""

from __future__ import annotations


class IPAdapterError(Exception):
    """Base class: the message is written for the person running the WebUI."""


class ModelFileError(IPAdapterError):
    """A file could not be read, or it is not the kind of model it was loaded as."""


class IncompatibleModelError(IPAdapterError):
    """Adapter, image encoder and UNet do not fit together."""


class EncoderError(IPAdapterError):
    """The image encoder cannot produce what the adapter needs."""
