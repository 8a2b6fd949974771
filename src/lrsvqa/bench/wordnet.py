"""WordNet 3.0, offline, for the open-ended answer similarity of the paper's metric.

Route: Debian's ``wordnet-base`` package installs the Princeton WordNet 3.0
database (the data NLTK's ``wordnet`` corpus is made of) in ``/usr/share/wordnet``;
``make install`` installs it, so no ``nltk.download`` and no network is needed.
NLTK's :class:`~nltk.corpus.reader.wordnet.WordNetCorpusReader` reads it with two
adjustments (see :class:`_WordNet30Reader`). ``LRSVQA_WORDNET_DIR`` may point at any
other directory holding the WordNet 3.0 database files (``data.noun``,
``index.noun``, ...), e.g. an unpacked NLTK ``corpora/wordnet``.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import IO, Any

import nltk.data
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from lrsvqa.errors import InputFileError

WORDNET_DIR_ENV = "LRSVQA_WORDNET_DIR"
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

# The 45 lexicographer files of WordNet 3.0, in file-number order (lexnames(5WN)).
# Debian's package omits the ``lexnames`` file that NLTK's reader requires.
_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_REQUIRED_FILES = ("data.noun", "index.noun", "data.adj", "index.adj", "data.verb", "index.verb")


class WordNetUnavailableError(InputFileError):
    """The WordNet database cannot be found or read."""


class _WordNet30Reader(WordNetCorpusReader):
    """NLTK's reader on a bare WordNet 3.0 database directory.

    * ``lexnames`` is served from :data:`_LEXNAMES` when the directory lacks it.
    * The synset mapping to NLTK's own ``wordnet`` corpus, used only by the
      multilingual (OMW) functions, is skipped: the data *is* WordNet 3.0 and
      computing the map would require that very corpus to be installed.
    """

    def open(self, file: str) -> IO[Any]:
        """Open a database file, synthesising ``lexnames`` when absent."""
        if file == "lexnames" and not (Path(self.root.path) / file).is_file():
            return io.StringIO(_lexnames_text())
        return super().open(file)

    def map_wn(self, version: str = "wordnet") -> None:
        """No mapping: the database is WordNet 3.0 itself (see class docstring)."""
        return None


def _lexnames_text() -> str:
    """The ``lexnames`` file: number, name and syntactic category per line."""
    rows = (
        f"{number:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}"
        for number, name in enumerate(_LEXNAMES)
    )
    return "\n".join(rows) + "\n"


def find_wordnet_dir() -> Path:
    """The WordNet database directory: ``$LRSVQA_WORDNET_DIR``, else Debian's.

    Raises:
        WordNetUnavailableError: The directory is missing or incomplete; the
            message says how to install it.
    """
    configured = os.environ.get(WORDNET_DIR_ENV)
    directory = Path(configured) if configured else DEBIAN_WORDNET_DIR
    missing = [name for name in _REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        source = f"${WORDNET_DIR_ENV}={configured}" if configured else str(directory)
        raise WordNetUnavailableError(
            source,
            f"WordNet 3.0 database not found (missing {', '.join(missing)}). "
            "Install Debian's package: `apt-get install wordnet-base` (`make install` "
            f"does it), or set {WORDNET_DIR_ENV} to a directory with the WordNet 3.0 "
            "database files.",
        )
    return directory


def load_wordnet(directory: Path) -> WordNetCorpusReader:
    """Open the WordNet database in ``directory`` (about one second).

    The directory is appended to ``nltk.data.path`` because NLTK refuses to read
    corpus files outside its data path.

    Raises:
        WordNetUnavailableError: NLTK cannot read the database.
    """
    root = str(Path(directory).resolve())
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    try:
        with warnings.catch_warnings():
            # "multilingual functions are not available": expected, OMW is not used.
            warnings.simplefilter("ignore", UserWarning)
            return _WordNet30Reader(root, None)
    except (OSError, ValueError, LookupError) as exc:
        raise WordNetUnavailableError(root, f"cannot read WordNet ({exc})") from exc


@functools.cache
def wordnet() -> WordNetCorpusReader:
    """The process-wide WordNet reader, loaded on first use."""
    return load_wordnet(find_wordnet_dir())


@functools.lru_cache(maxsize=65536)
def max_path_similarity(first: str, second: str) -> float:
    """Largest WordNet path similarity over all synset pairs of two strings.

    The strings are looked up as given (NLTK lower-cases them and tries their base
    forms); WordNet spells compounds with ``_`` (``parking_lot``), so a phrase with
    a space usually has no synsets. A string without synsets, or a pair of synsets
    with no path between them, scores 0.
    """
    reader = wordnet()
    synsets_a = reader.synsets(first)
    synsets_b = reader.synsets(second)
    best = 0.0
    for synset_a in synsets_a:
        for synset_b in synsets_b:
            best = max(best, synset_a.path_similarity(synset_b) or 0.0)
    return best
