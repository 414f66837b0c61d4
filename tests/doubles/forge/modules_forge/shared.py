"""Double of ``modules_forge/shared.py`` (stable-diffusion-webui-forge dfdcbab6): the preprocessor
registry, a module-level dict from name to preprocessor that ``add_supported_preprocessor``
fills (a name registered again replaces the earlier object, as a UI reload does)."""

supported_preprocessors: dict = {}


def add_supported_preprocessor(preprocessor) -> None:
    supported_preprocessors[preprocessor.name] = preprocessor
