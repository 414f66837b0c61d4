"""Double of ``scripts/supported_preprocessor.py`` (sd-webui-controlnet 56cec5b2): the class-level
preprocessor registry.

``Preprocessor.all_processors`` maps each label to its preprocessor and ``all_processors_by_name``
each name; ``add_supported_preprocessor`` refuses a label or name registered twice;
``get_preprocessor`` looks a label up first, then a name; ``cached_call`` wraps the result in a
``Result(value, display_images)`` whose display image is the result when the preprocessor returns
an image, else the input.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple


class Preprocessor:
    all_processors: ClassVar[dict[str, Preprocessor]] = {}
    all_processors_by_name: ClassVar[dict[str, Preprocessor]] = {}

    def __init__(self, name: str, label: str | None = None) -> None:
        self.name = name
        self._label = label
        self.tags: list[str] = []
        self.returns_image = True
        self.preprocessor_deps: list[str] = []

    @property
    def label(self) -> str:
        return self._label if self._label is not None else self.name

    class Result(NamedTuple):
        value: Any
        display_images: list

    @classmethod
    def add_supported_preprocessor(cls, p: Preprocessor) -> None:
        if p.label in cls.all_processors or p.name in cls.all_processors_by_name:
            raise AssertionError(f"{p.label} already registered!")
        cls.all_processors[p.label] = p
        cls.all_processors_by_name[p.name] = p

    @classmethod
    def get_preprocessor(cls, name: str) -> Preprocessor | None:
        return cls.all_processors.get(name, cls.all_processors_by_name.get(name))

    def cached_call(self, input_image, *args, **kwargs) -> Preprocessor.Result:
        result = self(input_image, *args, **kwargs)
        if isinstance(result, Preprocessor.Result):
            return result
        return Preprocessor.Result(result, [result if self.returns_image else input_image])

    def __call__(self, input_image, resolution=512, slider_1=None, slider_2=None, slider_3=None, **kwargs):
        raise NotImplementedError

    def unload(self) -> bool:
        return False
