"""Double of ``scripts/preprocessor/__init__.py`` (sd-webui-controlnet 56cec5b2): importing the
package registers the preprocessors (PuLID's before the legacy table, as there)."""

from .legacy.legacy_preprocessors import *  # noqa: F403
from .pulid import *  # noqa: F403
