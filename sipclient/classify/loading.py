"""The template library and unknown-announcement store named by a config's `classify` keys.

One place for the server and the daemon, so both read `classify.templates`
the same way and a folder that cannot be used stops the program at start with
an error naming the key, instead of failing on the first call.
"""

from __future__ import annotations

from sipclient.classify.templates import LibraryError, TemplateLibrary
from sipclient.classify.unknowns import UnknownStore
from sipclient.config import ClassifySettings, ConfigError


def load_library(settings: ClassifySettings) -> TemplateLibrary:
    """`classify.templates`, or the library shipped with the package when unset."""
    if settings.templates is None:
        return TemplateLibrary.default()
    try:
        return TemplateLibrary.load(settings.templates)
    except LibraryError as exc:
        raise ConfigError("classify.templates", str(exc)) from None


def open_unknown_store(settings: ClassifySettings) -> UnknownStore | None:
    """`classify.unknown_store`, or None (unmatched announcements are not kept)."""
    if settings.unknown_store is None:
        return None
    return UnknownStore(settings.unknown_store)
