"""What makes two usernames or two e-mail addresses the same: one rule for every path.

The API, the admin, ``createsuperuser`` and the login forms must agree on it,
or a name stored one way is looked up another (a user created as "x" and
U+1D400 MATHEMATICAL BOLD CAPITAL A could not log in, and a login under that
name would open the account of "xA"). So:

* a username is stored in NFKC form (what Django's login forms look it up by),
  and compared by the database's collation, case- and accent-insensitively
  (``users/migrations/0003``: a collation that tells every character apart,
  supplementary planes included);
* a username's letters come from one script, or from one of the combinations
  Unicode's "highly restrictive" profile allows (Latin with Han and Japanese
  kana, with Han and Bopomofo, or with Han and Hangul): "alice" spelt with a
  Cyrillic first letter beside "alice" is refused. A name written wholly in
  another script that happens to look like a Latin one (Cyrillic letters that
  read "ace") is allowed: telling those apart needs Unicode's confusables
  table, and the names are different to every user who reads the script;
* an e-mail domain is stored in its Unicode form under IDNA 2008 with UTS #46
  mapping, so ``bücher.example``, ``BÜCHER.example`` and ``xn--bcher-kva.example``
  are one address (``straße.de`` stays itself, as registries treat it since 2010).
  The local part is kept as given: its meaning is the receiving server's.
"""

import unicodedata

import idna
from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible

# The scripts that may share one name besides a single script of its own.
_SCRIPT_COMBINATIONS = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# Leading words of Unicode character names that name no script by themselves.
_NAME_TO_SCRIPT = {"CJK": "HAN", "KATAKANA-HIRAGANA": "KATAKANA", "HALFWIDTH": None}


def normalize_username(username: str) -> str:
    """NFKC, as ``AbstractBaseUser.normalize_username`` and the login forms apply it."""
    return unicodedata.normalize("NFKC", username)


def normalize_email(email: str) -> str:
    """The address with its domain in canonical form; raises ``ValidationError`` for a
    domain that is no valid internationalized domain name."""
    local, at, domain = email.strip().rpartition("@")
    if not at:
        return email
    if domain.startswith("["):  # an address literal, e.g. [192.0.2.1]
        return f"{local}@{domain.lower()}"
    try:
        canonical = idna.decode(idna.encode(domain, uts46=True))
    except idna.IDNAError as exc:
        raise ValidationError("Enter a valid email address.", code="invalid") from exc
    return f"{local}@{canonical}"


def _script(char: str) -> str | None:
    """The script of a letter, from its Unicode name; None for anything else."""
    if not char.isalpha():
        return None
    first_word = unicodedata.name(char, "").split(" ", 1)[0]
    return _NAME_TO_SCRIPT.get(first_word, first_word) or None


@deconstructible
class SingleScriptValidator:
    """Refuses a name whose letters mix scripts (see the module's docstring)."""

    message = "Use letters of one script (a name may not mix, say, Latin and Cyrillic)."
    code = "mixed_scripts"

    def __call__(self, value: str) -> None:
        scripts = {script for char in normalize_username(value) if (script := _script(char))}
        if len(scripts) <= 1 or any(scripts <= allowed for allowed in _SCRIPT_COMBINATIONS):
            return
        raise ValidationError(self.message, code=self.code)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SingleScriptValidator)
