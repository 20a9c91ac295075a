"""Digits of other scripts, read as the ASCII digits they are: one rule for GSM8K and MATH answers alike
(the package docstring says why).
"""

from __future__ import annotations

import unicodedata


def _ascii_digits(text: str) -> str:
    """``text`` with every Unicode decimal digit (category Nd: fullwidth ``４``, Arabic-Indic ``٤``,
    Devanagari ``४``, ...) written as the ASCII digit of the same value. Superscripts and other
    numerals that are no decimal digits (``²``, ``½``, ``Ⅳ``) are left as they are."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() or unicodedata.decimal(c, None) is None else str(unicodedata.decimal(c))
                   for c in text)
