"""CTC decoding: per-frame log-probabilities in, words with times and confidences out.

Two decoders share one output type. `GreedyDecoder` takes the best token per frame. `BeamDecoder`
runs flashlight-text's beam search (called directly: no torchaudio), optionally constrained to a
lexicon, rescored by an n-gram LM (KenLM, ARPA or binary) and biased toward hotwords; this is how
search steers recognition toward the catalog's words. `SpottingDecoder` wraps either and adds the
catalog phrases that fit the emissions best (`asr.spotting`), which search ranks by.

Confidence is the geometric mean of the probabilities of the emitted characters at the frames
that emitted them: 1.0 when the model was sure of every character, and 0.0 for an empty result.
"""

import logging
import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asr.dependencies import require
from asr.errors import DecoderConfigError
from asr.model import Emissions, Vocabulary
from asr.spotting import PhraseSpotter, Spot
from asr.text import normalize_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WordSpan:
    """A recognized word, times in seconds from the start of the decoded emissions."""

    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True)
class Hypothesis:
    """A decoded utterance; `text` is lowercase words separated by single spaces."""

    text: str
    confidence: float
    words: tuple[WordSpan, ...] = ()
    spots: tuple[Spot, ...] = ()
    """Catalog phrases that fit the emissions best, when a `SpottingDecoder` decoded them."""


class Decoder(Protocol):
    """Turns one clip's emissions into a hypothesis. Implementations hold no per-clip state."""

    def decode(self, emissions: Emissions) -> Hypothesis: ...


def _is_special(token: str) -> bool:
    return len(token) > 1 and token.startswith("<") and token.endswith(">")


def hypothesis_from_path(
    token_ids: Sequence[int], frames: Sequence[int], emissions: Emissions, vocab: Vocabulary
) -> Hypothesis:
    """Group emitted tokens (blanks and repeats already removed) into timed, scored words."""
    words: list[WordSpan] = []
    all_log_probs: list[float] = []
    chars: list[str] = []
    char_frames: list[int] = []
    char_log_probs: list[float] = []

    def flush() -> None:
        if chars:
            words.append(
                WordSpan(
                    word="".join(chars),
                    start_s=char_frames[0] * emissions.frame_s,
                    end_s=(char_frames[-1] + 1) * emissions.frame_s,
                    confidence=math.exp(sum(char_log_probs) / len(char_log_probs)),
                )
            )
            chars.clear()
            char_frames.clear()
            char_log_probs.clear()

    for token_id, frame in zip(token_ids, frames, strict=True):
        token = vocab.tokens[token_id]
        if token_id == vocab.delimiter_id:
            flush()
        elif token_id != vocab.blank_id and not _is_special(token):
            log_prob = float(emissions.log_probs[frame, token_id])
            chars.append(token.lower())
            char_frames.append(int(frame))
            char_log_probs.append(log_prob)
            all_log_probs.append(log_prob)
    flush()
    confidence = math.exp(sum(all_log_probs) / len(all_log_probs)) if all_log_probs else 0.0
    return Hypothesis(" ".join(w.word for w in words), confidence, tuple(words))


class GreedyDecoder:
    """Best token per frame, repeats collapsed, blanks removed."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab

    def decode(self, emissions: Emissions) -> Hypothesis:
        best = emissions.log_probs.argmax(axis=1)
        if best.size == 0:
            return Hypothesis("", 0.0)
        changed = np.concatenate(([True], best[1:] != best[:-1]))
        frames = np.flatnonzero(changed & (best != self.vocab.blank_id))
        return hypothesis_from_path(best[frames].tolist(), frames.tolist(), emissions, self.vocab)


class SpottingDecoder:
    """Another decoder's hypothesis, plus the phrases a `PhraseSpotter` finds in the same emissions."""

    def __init__(self, decoder: Decoder, spotter: PhraseSpotter) -> None:
        self.decoder = decoder
        self.spotter = spotter

    def decode(self, emissions: Emissions) -> Hypothesis:
        return replace(self.decoder.decode(emissions), spots=self.spotter.spot(emissions))


@dataclass(frozen=True)
class BeamOptions:
    """Beam search settings. Scores are natural-log; weights multiply the LM's log-probability.

    `lexicon` restricts output to those words (None: any spelling). `lm_path` is a KenLM model
    (ARPA or binary) over words and needs a lexicon. `hotwords` are words or phrases that get
    `hotword_weight` per matching character (lexicon-free) or per word (with a lexicon); a
    partial match that then diverges gives its bonus back, so only whole hotwords gain.
    """

    beam_size: int = 32
    lexicon: tuple[str, ...] | None = None
    lm_path: Path | None = None
    lm_weight: float = 1.0
    word_score: float = 0.0
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = 2.0
    beam_threshold: float = 25.0
    """Prune hypotheses this far (log space) below the best: flashlight's default, tuned for speed."""

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise DecoderConfigError("beam size must be at least 1")
        if self.lm_path is not None and self.lexicon is None:
            raise DecoderConfigError("an n-gram LM needs a lexicon (its words)")
        if self.lm_path is not None and not Path(self.lm_path).is_file():
            raise DecoderConfigError(f"no such language model file: {self.lm_path}")
        if self.hotword_weight < 0:
            raise DecoderConfigError("hotword weight must be >= 0")


def read_word_list(path: str | Path) -> tuple[str, ...]:
    """Read a lexicon or hotword file: one word or phrase per line, normalized; '#' starts a comment."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DecoderConfigError(f"cannot read word list {path}: {e}") from e
    entries = [normalize_text(line.split("#", 1)[0]) for line in lines]
    words = tuple(dict.fromkeys(e for e in entries if e))
    if not words:
        raise DecoderConfigError(f"the word list {path} has no words")
    return words


@dataclass
class _TrieNode:
    children: dict[int, "_TrieNode"] = field(default_factory=dict)
    terminal: bool = False


@dataclass(frozen=True)
class _HotwordState:
    node: _TrieNode | None
    """Position in the hotword trie; None while inside a word that matches no hotword."""
    gained: float
    """Bonus given so far for the current partial match, taken back if the match fails."""


class BeamDecoder:
    """Flashlight CTC beam search with optional lexicon, n-gram LM and hotword bias."""

    def __init__(self, vocab: Vocabulary, options: BeamOptions | None = None) -> None:
        self.vocab = vocab
        self.options = options = options or BeamOptions()
        lexicon = _with_hotword_words(options.lexicon, options.hotwords)
        with tempfile.TemporaryDirectory() as tmp:
            lexicon_file = _write_lexicon(lexicon, vocab, Path(tmp)) if lexicon is not None else None
            try:
                # Flashlight keeps a raw pointer to the LM, so this object holds a reference.
                self._lm = _decoder_lm(vocab, options, lexicon_file)
                self._decoder = _flashlight_decoder(vocab, options, lexicon_file, self._lm)
            except (RuntimeError, ValueError) as e:
                raise DecoderConfigError(f"cannot build the beam decoder: {e}") from e

    def decode(self, emissions: Emissions) -> Hypothesis:
        log_probs = np.ascontiguousarray(emissions.log_probs, dtype=np.float32)
        frame_count, token_count = log_probs.shape
        if frame_count == 0:
            return Hypothesis("", 0.0)
        # Flashlight reads the array through its address: `log_probs` stays alive for the call.
        path = self._decoder.decode(log_probs.ctypes.data, frame_count, token_count)[0].tokens
        token_ids, frames = [], []
        for step, token in enumerate(path):
            if token != self.vocab.blank_id and (step == 0 or token != path[step - 1]):
                token_ids.append(token)
                # The path starts with one extra step (the initial silence state), so its step t
                # is emission frame t - 1.
                frames.append(max(step - 1, 0))
        return hypothesis_from_path(token_ids, frames, emissions, self.vocab)


BEAM_SEARCH = "beam search (lexicon, hotwords, catalog-biased decoding)"


def _flashlight(module: str = "decoder") -> Any:
    return require(f"flashlight.lib.text.{module}", BEAM_SEARCH)


def _decoder_lm(vocab: Vocabulary, options: BeamOptions, lexicon_file: Path | None) -> Any:
    """The LM flashlight scores with: hotword bias (over KenLM if given), KenLM, or none."""
    if options.hotwords:
        return _hotword_lm(vocab, options, lexicon_file)
    if options.lm_path is not None and lexicon_file is not None:
        dictionary = _flashlight("dictionary")
        word_dict = dictionary.create_word_dict(dictionary.load_words(str(lexicon_file)))
        return _flashlight("decoder.kenlm").KenLM(str(options.lm_path), word_dict)
    return _flashlight().ZeroLM()


def _flashlight_decoder(vocab: Vocabulary, options: BeamOptions, lexicon_file: Path | None, lm: Any) -> Any:
    """A lexicon-free decoder, or one constrained to the lexicon's words through a spelling trie."""
    fl, dictionary = _flashlight(), _flashlight("dictionary")

    token_count = len(vocab.tokens)
    lm_weight = options.lm_weight if options.lm_path or options.hotwords else 0.0
    common = {
        "beam_size": options.beam_size,
        "beam_size_token": token_count,
        "beam_threshold": options.beam_threshold,
        "lm_weight": lm_weight,
        "sil_score": 0.0,
        "log_add": False,
        "criterion_type": fl.CriterionType.CTC,
    }
    if lexicon_file is None:
        free_options = fl.LexiconFreeDecoderOptions(**common)
        return fl.LexiconFreeDecoder(free_options, lm, vocab.delimiter_id, vocab.blank_id, [])
    lexicon = dictionary.load_words(str(lexicon_file))
    word_dict = dictionary.create_word_dict(lexicon)
    trie = fl.Trie(token_count, vocab.delimiter_id)
    start = lm.start(False)
    for word, spellings in lexicon.items():
        word_id = word_dict.get_index(word)
        _, score = lm.score(start, word_id)  # smeared through the trie: the LM look-ahead
        for spelling in spellings:
            trie.insert([vocab.index(token) for token in spelling], word_id, score)
    trie.smear(fl.SmearingMode.MAX)
    lexicon_options = fl.LexiconDecoderOptions(**common, word_score=options.word_score, unk_score=-math.inf)
    unk_id = word_dict.get_index("<unk>")
    return fl.LexiconDecoder(lexicon_options, trie, lm, vocab.delimiter_id, vocab.blank_id, unk_id, [], False)


def _with_hotword_words(lexicon: tuple[str, ...] | None, hotwords: tuple[str, ...]) -> tuple[str, ...] | None:
    """A lexicon must be able to spell every hotword, so hotword words join it."""
    if lexicon is None:
        return None
    extra = (w for phrase in hotwords for w in phrase.split())
    return tuple(dict.fromkeys([w for entry in lexicon for w in entry.split()] + list(extra)))


def _write_lexicon(words: Iterable[str], vocab: Vocabulary, folder: Path) -> Path:
    """Write flashlight's lexicon format: `word t o k e n s |` per line, in the model's tokens."""
    delimiter = vocab.tokens[vocab.delimiter_id]
    lines, skipped = [], []
    for word in words:
        spelling = vocab.spell(word)
        if spelling is None:
            skipped.append(word)
        else:
            lines.append(f"{word}\t{' '.join(spelling)} {delimiter}")
    if skipped:
        logger.warning(
            "lexicon: %d words use characters the model lacks, skipped: %s", len(skipped), skipped[:5]
        )
    if not lines:
        raise DecoderConfigError("no lexicon word can be spelled with the model's tokens")
    path = folder / "lexicon.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _hotword_lm(vocab: Vocabulary, options: BeamOptions, lexicon_file: Path | None) -> Any:
    """Build the decoder LM that adds hotword bonuses (wrapping KenLM when one is given)."""
    fl = _flashlight()
    LM, LMState = fl.LM, fl.LMState  # noqa: N806 (flashlight's class names)

    inner: Any = None
    weight = max(options.lm_weight, 1e-6)
    root = _build_trie(options.hotwords, vocab)
    bonus_by_index: list[float] = []
    if lexicon_file is not None:
        dictionary = _flashlight("dictionary")
        word_dict = dictionary.create_word_dict(dictionary.load_words(str(lexicon_file)))
        words = [word_dict.get_entry(i) for i in range(word_dict.index_size())]
        if options.lm_path is not None:
            inner = _flashlight("decoder.kenlm").KenLM(str(options.lm_path), word_dict)
        hot = {w for phrase in options.hotwords for w in phrase.split()}
        bonus_by_index = [options.hotword_weight if w in hot else 0.0 for w in words]

    def step(inner_state: Any, hot: _HotwordState, index: int) -> tuple[Any, _HotwordState, float]:
        if lexicon_file is None:
            next_hot, bonus = _trie_step(hot, index, vocab, root, options.hotword_weight)
            return None, next_hot, bonus
        next_inner, lm_score = inner.score(inner_state, index) if inner is not None else (None, 0.0)
        return next_inner, hot, lm_score * options.lm_weight + bonus_by_index[index]

    class HotwordLM(LM):  # type: ignore[misc,valid-type]
        """Word mode: a bonus per hotword. Token mode: a bonus per character along the hotword trie.

        Flashlight multiplies whatever this returns by `lm_weight`; scores are divided by it here
        so the hotword bonus means the same whatever the LM weight.
        """

        def __init__(self) -> None:
            LM.__init__(self)
            # Keyed by, and so holding, the state objects: flashlight hands back the same state for
            # the same path, and the dict keeps their Python side alive while it does.
            self.states: dict[Any, tuple[Any, _HotwordState, float]] = {}

        def start(self, start_with_nothing: bool) -> Any:
            self.states.clear()
            state = LMState()
            inner_state = inner.start(start_with_nothing) if inner is not None else None
            self.states[state] = (
                inner_state,
                _HotwordState(root if lexicon_file is None else None, 0.0),
                0.0,
            )
            return state

        def score(self, state: Any, index: int) -> tuple[Any, float]:
            child = state.child(index)
            if child not in self.states:
                inner_state, hot, _ = self.states[state]
                self.states[child] = step(inner_state, hot, index)
            return child, self.states[child][2] / weight

        def finish(self, state: Any) -> tuple[Any, float]:
            inner_state, hot, _ = self.states[state]
            if inner is not None:
                return state, float(inner.finish(inner_state)[1])
            unfinished = hot.node is not None and hot.node is not root and not hot.node.terminal
            return state, (-hot.gained if unfinished else 0.0) / weight

    return HotwordLM()


def _build_trie(hotwords: Sequence[str], vocab: Vocabulary) -> _TrieNode:
    root = _TrieNode()
    for phrase in hotwords:
        spelling = vocab.spell(phrase)
        if spelling is None:
            raise DecoderConfigError(f"hotword {phrase!r} uses characters the model lacks")
        node = root
        for token in spelling:
            node = node.children.setdefault(vocab.index(token), _TrieNode())
        node.terminal = True
    return root


def _trie_step(
    state: _HotwordState, token: int, vocab: Vocabulary, root: _TrieNode, weight: float
) -> tuple[_HotwordState, float]:
    """Advance the hotword match by one emitted token; returns the new state and its bonus."""
    node = state.node
    if token == vocab.delimiter_id:
        if node is not None and token in node.children:  # a phrase continues into its next word
            return _HotwordState(node.children[token], state.gained), 0.0
        kept = node is None or node is root or node.terminal
        return _HotwordState(root, 0.0), (0.0 if kept else -state.gained)
    if node is not None and token in node.children:
        return _HotwordState(node.children[token], state.gained + weight), weight
    return _HotwordState(None, 0.0), -state.gained
