"""The sentiment task: short reviews of the world's films, books, meals and places, labelled by composition.

A review is built as a structure first (clauses, each an adjective with an optional negator and degree word) and only
then written out, so its label is computed, never guessed. The rules, the article's running example of a task that
needs more than word counting:

  1. an adjective has a polarity:              "tasty" +,  "boring" -
  2. a negator flips it:                       "not tasty" -,  "never boring" +,  "far from perfect" -,
                                               "not bad at all" +,  "hardly exciting" -
  3. degree words keep it:                     "very tasty" +,  "a bit boring" -,  "absolutely awful" -
  4. in "X but Y" the clause after "but" decides, and the two clauses always disagree, so counting positive and
     negative words gets these reviews wrong half the time:
                                               "The story was dull, but the ending was wonderful." +

Four kinds, a quarter of each split, each with exactly as many positive as negative reviews:
  plain (rules 1, 3), negation (rule 2), contrast (rule 4), contrast_negation (rules 2 and 4 together).

Generalisation, not memorisation: the test split is written with sentence templates that train and validation never
use (`TEST_FRAMES`), and with adjective pairings that they never use (see `is_held_out`): a negator/adjective pair
like "never dull", or an adjective pair like ("slow", "moving") in a contrast. Validation shares train's templates and
pairings (in-distribution, for choosing hyperparameters); no review text appears in two splits.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

from ..errors import MiniftError
from . import lexicon as lx
from ._rng import StableRandom

LABELS = ("negative", "positive")                       # label ids 0, 1 (SST-2's order)
KINDS = ("plain", "negation", "contrast", "contrast_negation")
SENTIMENT_SEED = 0
POLARITY = lx.adjective_polarity()

NEGATORS = ("not", "never", "not at all", "far from", "hardly")
NEGATION_WORDS = ("not", "never", "hardly", "far from")  # what `rule_label` looks for
DEGREES = ("very", "really", "truly", "extremely", "rather", "somewhat", "quite")
MILD_NEGATIVE_DEGREES = ("a bit", "slightly", "a little")      # only sound right before a negative adjective
DEGREES_AFTER_NOT = ("very", "really")
EXTREME_DEGREES = ("truly", "really", "absolutely")             # the only ones "wonderful" or "awful" take

# What can be reviewed, and the aspects a review can contrast: (noun, plural, adjective class).
DOMAINS = ("film", "book", "meal", "place")
ITEM_CLASS = {"film": "story", "book": "story", "meal": "food", "place": "place"}
ASPECTS = {
    "film": (("story", False, "story"), ("acting", False, "story"), ("ending", False, "story"),
             ("music", False, "general"), ("jokes", True, "story"), ("actors", True, "general")),
    "book": (("plot", False, "story"), ("characters", True, "story"), ("ending", False, "story"),
             ("writing", False, "general"), ("first chapter", False, "story")),
    "meal": (("food", False, "food"), ("soup", False, "food"), ("bread", False, "food"), ("dessert", False, "food"),
             ("staff", True, "service"), ("service", False, "service"), ("waiter", False, "service")),
    "place": (("streets", True, "place"), ("park", False, "place"), ("square", False, "place"),
              ("view", False, "general"), ("people", True, "service"), ("houses", True, "place")),
}
VERB = {"film": "watched", "book": "read", "meal": "had", "place": "visited"}
REVIEWED_PLACES = ("park", "market", "museum", "harbour", "station", "library", "theatre", "cinema")


@dataclass(frozen=True)
class Frame:
    """A sentence template. Slots: {c1} {c2} clauses ({C1} capitalised), {p2} a bare predicate, {did} {item}.

    `subjects` says what each clause is about: "item" (named), "it" (the item as a pronoun), "aspect" (a part of it),
    "same" (the first clause's subject again, so only its predicate is written).
    """
    id: str
    pattern: str
    subjects: tuple[str, ...]


TRAIN_FRAMES = (
    Frame("S1", "{C1}.", ("item",)),
    Frame("S2", "I thought {c1}.", ("item",)),
    Frame("S3", "We {did} {item}. {C1}.", ("it",)),
    Frame("S4", "Honestly, {c1}.", ("item",)),
    Frame("S5", "Review: {c1}.", ("item",)),
    Frame("C1", "{C1}, but {c2}.", ("aspect", "aspect")),
    Frame("C2", "{C1} but {p2}.", ("item", "same")),
    Frame("C3", "I thought {c1}, but {c2}.", ("aspect", "aspect")),
    Frame("C4", "We {did} {item}. {C1}, but {c2}.", ("aspect", "aspect")),
)
TEST_FRAMES = (
    Frame("H1", "In my opinion, {c1}.", ("item",)),
    Frame("H2", "Last week I {did} {item}, and {c1}.", ("it",)),
    Frame("H3", "If you ask me, {c1}.", ("item",)),
    Frame("HC1", "In my opinion, {c1}, but {c2}.", ("aspect", "aspect")),
    Frame("HC2", "Last week I {did} {item}. {C1}, but {c2}.", ("it", "aspect")),
    Frame("HC3", "To be honest, {c1}, but {c2}.", ("aspect", "aspect")),
    Frame("HC4", "If you ask me, {c1} but {p2}.", ("item", "same")),
)


@dataclass(frozen=True)
class Predicate:
    """What a clause says about its subject: [negator] [degree] adjective."""
    adjective: str
    negator: str | None = None
    degree: str | None = None

    @property
    def polarity(self) -> int:
        """Rules 1-3: the adjective's polarity, flipped by a negator, untouched by a degree word."""
        return -POLARITY[self.adjective] if self.negator else POLARITY[self.adjective]

    def text(self) -> str:
        adj = f"{self.degree} {self.adjective}" if self.degree else self.adjective
        if self.negator == "not at all":
            return f"not {adj} at all"
        return f"{self.negator} {adj}" if self.negator else adj


@dataclass(frozen=True)
class Clause:
    subject: str                                        # "the story", "the film The Lost Kite", "it"
    plural: bool
    predicate: Predicate

    def text(self) -> str:
        return f"{self.subject} {'were' if self.plural else 'was'} {self.predicate.text()}"


@dataclass(frozen=True)
class Review:
    text: str
    label: str                                          # "positive" | "negative"
    kind: str
    template: str
    pairing: tuple[str, ...]                            # the key `is_held_out` decides on
    clauses: tuple[Clause, ...]


def review_polarity(clauses) -> int:
    """Rule 4: a review's polarity is its last clause's (the one after "but" when there are two)."""
    return clauses[-1].predicate.polarity


def label_name(polarity: int) -> str:
    return "positive" if polarity > 0 else "negative"


def pairing_of(kind: str, clauses) -> tuple[str, ...]:
    """The adjective pairing a review uses: (degree, adjective), (negator, adjective) or (adjective, adjective)."""
    p = [c.predicate for c in clauses]
    if kind == "plain":
        return ("plain", p[0].degree or "-", p[0].adjective)
    if kind == "negation":
        return ("negation", p[0].negator, p[0].adjective)
    return ("pair", p[0].adjective, p[1].adjective)


def is_held_out(pairing: tuple[str, ...], seed: int = SENTIMENT_SEED) -> bool:
    """Whether a pairing belongs to the test split only: a fixed quarter of all pairings, by a stable hash."""
    return zlib.crc32("|".join((str(seed),) + tuple(pairing)).encode()) % 4 == 0


def rule_label(text: str) -> str:
    """The composition rules applied to a review's text alone: the clause after the last "but" decides; its last
    review adjective gives the polarity, flipped when the clause holds a negation word. 100% on the task by design,
    a reference for what a model has to learn."""
    clause = text.lower().rsplit(" but ", 1)[-1]
    words = clause.replace(",", " ").replace(".", " ").split()
    adjectives = [w for w in words if w in POLARITY]
    if not adjectives:
        raise MiniftError(f"rule_label: no review adjective in {text!r}")
    negated = any(f" {n} " in f" {' '.join(words)} " for n in NEGATION_WORDS)
    return label_name(-POLARITY[adjectives[-1]] if negated else POLARITY[adjectives[-1]])


# ---- drawing reviews ---------------------------------------------------------------------------------------------
def _adjective(r: StableRandom, cls: str, polarity: int) -> str:
    """An adjective of the class (or, a third of the time, a general one) with the given polarity."""
    pos, neg = lx.ADJECTIVES["general" if r.chance(1 / 3) else cls]
    return r.choice(pos if polarity > 0 else neg)


def _predicate(r: StableRandom, cls: str, polarity: int, negated: bool) -> Predicate:
    """A predicate whose final polarity is `polarity`; negated ones use an adjective of the opposite polarity."""
    adjective = _adjective(r, cls, -polarity if negated else polarity)
    extreme = adjective in lx.EXTREME_ADJECTIVES
    if negated:
        negator = r.choice(NEGATORS)
        after_not = ("really",) if extreme else DEGREES_AFTER_NOT
        degree = r.choice((None, None) + after_not) if negator == "not" else None
        return Predicate(adjective, negator, degree)
    if extreme:
        degrees = (None, None, None) + EXTREME_DEGREES
    else:
        degrees = (None, None, None) + DEGREES + (MILD_NEGATIVE_DEGREES if POLARITY[adjective] < 0 else ())
    return Predicate(adjective, None, r.choice(degrees))


def _items(world, domain: str) -> list[tuple[str, bool]]:
    """(subject phrase, plural) for everything of a domain the world has."""
    if domain in ("film", "book"):
        works = [w for w in world.works if w.kind == domain]
        return [(f"the {domain} {w.title}", False) for w in works] + [(w.title, False) for w in works]
    if domain == "meal":
        return [(f"the {dish} at {t.cafe}", dish.endswith("s")) for t in world.towns for dish in lx.DISHES]
    return [(f"the {p} in {t.name}", False) for t in world.towns for p in REVIEWED_PLACES if t.has(p)] + \
        [(t.name, False) for t in world.towns]


def _clauses(r: StableRandom, world, domain: str, frame: Frame, kind: str, polarity: int):
    """The clauses of one review of `kind` whose final polarity is `polarity`, and the item it is about."""
    subject, plural = r.choice(_items(world, domain))
    if len(frame.subjects) == 1:
        negated = [kind == "negation"]
        polarities = [polarity]
    else:
        negated = [False, False] if kind == "contrast" else r.choice(([True, False], [False, True], [True, True]))
        polarities = [-polarity, polarity]                   # rule 4: "but" joins clauses that disagree
    aspects = r.sample(ASPECTS[domain], 2)
    clauses = []
    for k, role in enumerate(frame.subjects):
        if role == "aspect":
            noun, pl, cls = aspects[k]
            subj = f"the {noun}"
        else:
            subj, pl, cls = (subject if role == "item" else "they" if plural else "it"), plural, ITEM_CLASS[domain]
            if role == "same":
                subj = clauses[0].subject
        clauses.append(Clause(subj, pl, _predicate(r, cls, polarities[k], negated[k])))
    return subject, clauses


def _distinct(clauses) -> bool:
    """Two clauses never reuse one adjective ("far from fresh but rather fresh" says nothing)."""
    return len({c.predicate.adjective for c in clauses}) == len(clauses)


def _render(frame: Frame, domain: str, item: str, clauses) -> str:
    c = [cl.text() for cl in clauses]
    text = frame.pattern.format(
        c1=c[0], C1=c[0][0].upper() + c[0][1:], c2=c[1] if len(c) > 1 else "",
        p2=clauses[-1].predicate.text(), did=VERB[domain], item=item)
    return text[0].upper() + text[1:]


def draw_review(r: StableRandom, world, kind: str, polarity: int, test: bool, seed: int = SENTIMENT_SEED) -> Review:
    """One review of `kind` with the given final polarity, from test frames and held-out pairings iff `test`."""
    frames = [f for f in (TEST_FRAMES if test else TRAIN_FRAMES)
              if len(f.subjects) == (1 if kind in ("plain", "negation") else 2)]
    for _ in range(1000):
        frame, domain = r.choice(frames), r.choice(DOMAINS)
        item, clauses = _clauses(r, world, domain, frame, kind, polarity)
        pairing = pairing_of(kind, clauses)
        if _distinct(clauses) and is_held_out(pairing, seed) == test:
            return Review(_render(frame, domain, item, clauses), label_name(review_polarity(clauses)), kind,
                          frame.id, pairing, tuple(clauses))
    raise MiniftError(f"could not draw a {kind} review (test={test}): the held-out rule leaves nothing")


def make_sentiment(world, sizes: dict[str, int], seed: int = SENTIMENT_SEED) -> dict[str, list[Review]]:
    """The splits: every (kind, label) cell gets an equal share; no text repeats within or across splits."""
    r = StableRandom(seed)
    seen: set[str] = set()
    splits = {}
    for split, size in sizes.items():
        reviews = []
        for k, kind in enumerate(KINDS):
            per_label = size // 2 // len(KINDS) + (k < size // 2 % len(KINDS))
            for polarity in (+1, -1):
                reviews += _draw_unique(r, world, kind, polarity, split == "test", per_label, seen, seed)
        splits[split] = r.shuffle(reviews)
    return splits


def _draw_unique(r, world, kind, polarity, test, n, seen, seed) -> list[Review]:
    out, tries = [], 0
    while len(out) < n:
        review = draw_review(r, world, kind, polarity, test, seed)
        tries += 1
        if tries > 50 * n + 1000:
            raise MiniftError(f"sentiment: only {len(out)} distinct {kind} reviews after {tries} tries (wanted {n})")
        if review.text not in seen:
            seen.add(review.text)
            out.append(review)
    return out


def opinion_sentence(r: StableRandom, domain: str, subject: str) -> str:
    """An unlabelled opinion for the pretraining corpus: train frames' grammar, never a held-out pairing.

    `subject` is what the opinion is about ("the soup", "The Lost Kite"); the corpus learns the words and the
    grammar of opinions, and fine-tuning later learns what they mean for the label.
    """
    for _ in range(1000):
        kind = r.choice(KINDS)
        polarity = r.choice((+1, -1))
        if kind in ("plain", "negation"):
            clauses = [Clause(subject, False, _predicate(r, ITEM_CLASS[domain], polarity, kind == "negation"))]
        else:
            aspects = r.sample(ASPECTS[domain], 2)
            neg = [False, False] if kind == "contrast" else r.choice(([True, False], [False, True]))
            clauses = [Clause(f"the {n}", pl, _predicate(r, cls, p, ng))
                       for (n, pl, cls), p, ng in zip(aspects, (-polarity, polarity), neg)]
        if _distinct(clauses) and not is_held_out(pairing_of(kind, clauses)):
            text = ", but ".join(c.text() for c in clauses) + "."
            return text[0].upper() + text[1:]
    raise MiniftError("opinion_sentence: no pairing outside the held-out set")
