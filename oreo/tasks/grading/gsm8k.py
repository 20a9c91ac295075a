"""GSM8K grading: the response's final number (after its last ``####``, else its last number) and the
gold answer of a record, compared exactly as decimals.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from .digits import _ascii_digits

GSM8K_ANSWER_PREFIX = "####"

# A number with an optional sign and "$", thousands separators only in groups of three. The sign
# counts only where it cannot be a binary minus ("12-5" ends with 5, not -5). ASCII digits only:
# other scripts' digits are made ASCII first (_ascii_digits).
_NUMBER_RE = re.compile(
    r"(?P<sign>(?<![\w)\]}])-)?(?:\$\s?)?(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?P<frac>\.[0-9]+)?"
)


def _numbers(text: str) -> list[str]:
    out = []
    for m in _NUMBER_RE.finditer(text):
        sign = "-" if m.group("sign") else ""
        out.append(sign + m.group("int").replace(",", "") + (m.group("frac") or ""))
    return out


def extract_gsm8k_answer(text: str) -> str | None:
    """The model's final number, as plain digits (``"-1234.50"``), or None if it has none.

    The first number after the last ``####`` wins when there is one; otherwise the last number
    of the text. Commas between digit groups, a ``$`` and a trailing period are dropped; digits of
    other scripts are read as the ASCII digits they are (``"#### ４２"`` gives ``"42"``).
    """
    text = _ascii_digits(text)
    i = text.rfind(GSM8K_ANSWER_PREFIX)
    if i >= 0:
        after = _numbers(text[i + len(GSM8K_ANSWER_PREFIX):].split("\n", 1)[0])
        if after:
            return after[0]
    found = _numbers(text)
    return found[-1] if found else None


def gsm8k_gold(answer_field: str) -> str:
    """The gold answer of a GSM8K record: the text after its last ``#### ``, without commas.

    Raises ValueError if the field has no ``####`` line.
    """
    i = answer_field.rfind(GSM8K_ANSWER_PREFIX)
    if i < 0:
        raise ValueError(f"no '{GSM8K_ANSWER_PREFIX}' in GSM8K answer {answer_field[-80:]!r}")
    return answer_field[i + len(GSM8K_ANSWER_PREFIX):].strip().replace(",", "")


def _decimal(number: str) -> Decimal | None:
    try:
        return Decimal(number)
    except (InvalidOperation, ValueError):
        return None


def grade_gsm8k(response: str, gold: str) -> tuple[str | None, bool]:
    """``(extracted answer, whether it equals gold as a number)``; ``"3.50"`` equals ``"3.5"``.

    ``gold`` is a GSM8K gold answer such as :func:`gsm8k_gold` returns (commas and ``$`` are
    allowed). Raises ValueError if ``gold`` holds no number; never raises on the response.
    """
    gold_number = extract_gsm8k_answer(gold)
    gold_value = None if gold_number is None else _decimal(gold_number)
    if gold_value is None:
        raise ValueError(f"GSM8K gold answer {gold!r} is not a number")
    answer = extract_gsm8k_answer(response)
    value = None if answer is None else _decimal(answer)
    return answer, value is not None and value == gold_value
