"""The 15 XNLI languages (ISO 639-1): the `language` label values metrics keep apart, and the languages an XNLI
reader and the evaluation expect. A module of its own so that metrics need not import the XNLI reader."""

from __future__ import annotations

XNLI_LANGUAGES = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur")
