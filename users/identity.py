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
  Cyrillic first letter is refused, whatever names exist;
* a username may not look like another's (``username_skeletons``): "admin"
  spelt with U+0131 DOTLESS I or U+0251 LATIN SMALL LETTER ALPHA is refused
  beside "admin", "paypa1" (digit one) beside "paypal", and so is a name
  written wholly in Cyrillic that reads as an existing Latin one. Looks are
  compared by Unicode's confusable skeleton (UTS #39, section 4: NFD, each
  character to its prototype in confusables.txt, NFD again; the table is
  ``users.confusables``) of the NFKC name, in two ways, since the skeleton
  tells case apart (capital I and small l share a prototype, small i has its
  own) while the database does not:

  - the skeleton of the name as stored and shown, compared exactly: "lvan"
    looks like "Ivan", "paypaI" (capital I) like "paypal", "admln" like "admIn";
  - the skeleton of the case-folded name, compared by the username's collation
    (case- and accent-insensitively): "admin" with a dotless i or an alpha looks
    like "admin", the name of the user stored as "Admin" or "ADMIN" too. The
    folding comes first because the prototype of "m" is "rn" and that of "M" is
    "M": folded after the skeleton, "ADMIN" would not meet "admin" spelt with an
    alpha.

  - the skeleton of the upper-cased name, compared exactly: "KATE" spelt in Greek
    capitals or "TOM" in Cyrillic ones reads as "KATE" or "TOM", which are "kate" and
    "tom" to the collation; their folded skeletons are Greek and Cyrillic small
    letters, whose prototypes are no Latin ones, so only the capitals meet.
    Compared exactly, not by the collation, so that "ALI" and "ALL" (capital I
    and L differ) stay apart.

  Names that differ in every key are accepted, so "admln" stands beside "admin"
  (small l and small i are not confusable). Refusing that too would mean
  treating i and l as one letter (capital I is i in another case and l's
  look-alike), and refusing "all" beside "ali". Accents are the collation's
  business: "ádmin" is "admin" to the username's own unique index. Every key is
  held by a unique index (``users/migrations/0005``, ``0006``), so of two look-alikes
  created at the same moment the database refuses the second;
* an e-mail domain is stored in its Unicode form under IDNA 2008 with UTS #46
  mapping, so ``bücher.example``, ``BÜCHER.example`` and ``xn--bcher-kva.example``
  are one address (``straße.de`` stays itself, as registries treat it since 2010).
  The local part is kept as given: its meaning is the receiving server's.
"""

import unicodedata

import idna
from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible

from .confusables import PROTOTYPES

# The longest key a unique index holds in utf8mb4 (3,072 bytes). A skeleton can be
# longer than its name (a Hangul syllable's has up to seven characters); past this
# length it is cut, so two long names alike up to there count as look-alikes.
SKELETON_LENGTH = 768

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


def skeleton(text: str) -> str:
    """UTS #39's skeleton: two strings that look alike have the same one."""
    return unicodedata.normalize(
        "NFD", unicodedata.normalize("NFD", text).translate(PROTOTYPES)
    )


def username_skeletons(username: str) -> tuple[str, str, str]:
    """The keys by which usernames must differ (see the module's docstring): the
    skeleton of the NFKC name, that of its case folding, and that of its upper case."""
    name = normalize_username(username)
    return tuple(
        skeleton(spelling)[:SKELETON_LENGTH]
        for spelling in (name, name.casefold(), name.upper())
    )


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
