"""A small made-up world, drawn from a seed, and the corpus of simple English documents written about it.

The world holds people (name, family, age, home town, job, pet, best friend, hobby, favourite food and colour,
siblings, belongings), towns (region, landscape, landmark, places, railway), films, books and cafes. Everything is
fixed by `World(seed)`; documents only retell it, so a fact never contradicts itself across the corpus: Mila lives in
the same town in her profile, in her letters and in every story she appears in. That consistency is what lets a small
GPT pretrained on the corpus learn the world's facts (and the fact-question task in tasks.py test it).

    world = World(seed=0)                       # the canonical world: the shipped tasks are written about this one
    docs = world.documents(1000, seed=0)        # 1000 documents; the same seeds give the same documents
    texts = world_corpus(n_chars=5_000_000)     # as many documents as it takes to reach 5 million characters

Document i of a seed depends only on (seed, i), so `documents(n)` is a prefix of `documents(n + k)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

from ..errors import MiniftError
from . import lexicon as lx
from ._rng import StableRandom

WORLD_SEED = 0          # the world the shipped tasks describe


@dataclass(frozen=True)
class Town:
    name: str
    region: str
    size: str
    feature: lx.Feature
    landmark: str
    places: tuple[str, ...]
    cafe: str                                   # "The Blue Door"
    dish: str                                   # what the cafe is known for

    def has(self, place: str) -> bool:
        return place in self.places


@dataclass(frozen=True)
class Person:
    name: str
    surname: str
    female: bool
    age: int
    town: str
    job: lx.Job
    pet: lx.Pet
    pet_name: str
    hobby: lx.Hobby
    food: str
    colour: str
    belongings: tuple[tuple[str, str], ...]     # (colour, object): ("blue", "bicycle")
    siblings: tuple[str, ...] = ()
    best_friend: str = ""

    # pronouns, so writers never branch on gender themselves
    @property
    def he(self) -> str:
        return "she" if self.female else "he"

    @property
    def him(self) -> str:
        return "her" if self.female else "him"

    @property
    def his(self) -> str:
        return "her" if self.female else "his"

    @property
    def full_name(self) -> str:
        return f"{self.name} {self.surname}"

    def owns(self, obj: str) -> str | None:
        """The colour of this person's `obj` ("bicycle"), or None if they have none."""
        return next((c for c, o in self.belongings if o == obj), None)


@dataclass(frozen=True)
class Work:
    """A film or a book of the world."""
    title: str
    kind: str                                   # "film" | "book"
    genre: str                                  # "a comedy"
    author: str = ""                            # books: a person of the world


@dataclass
class World:
    """The entities and facts of one world. `World(seed)` is deterministic; `World(0)` is the canonical one."""
    seed: int = WORLD_SEED
    n_people: int = 96
    n_towns: int = 12
    people: tuple[Person, ...] = field(init=False, repr=False)
    towns: tuple[Town, ...] = field(init=False, repr=False)
    works: tuple[Work, ...] = field(init=False, repr=False)

    def __post_init__(self):
        if not 2 <= self.n_towns <= len(lx.TOWN_NAMES):
            raise MiniftError(f"n_towns={self.n_towns} must be between 2 and {len(lx.TOWN_NAMES)}")
        if not 4 <= self.n_people <= 2 * min(len(lx.FEMALE_NAMES), len(lx.MALE_NAMES)) or self.n_people % 2:
            raise MiniftError(f"n_people={self.n_people} must be even and between 4 and "
                              f"{2 * min(len(lx.FEMALE_NAMES), len(lx.MALE_NAMES))}")
        r = StableRandom(self.seed)
        self.towns = _draw_towns(r, self.n_towns)
        self._towns = {t.name: t for t in self.towns}
        self.people = _draw_people(r, self.n_people, self.towns)
        self._people = {p.name: p for p in self.people}
        self.works = _draw_works(r, self.people)
        self._minutes = {frozenset((t.name, self.neighbours(t.name)[1])): 10 + 5 * r.below(10) for t in self.towns}

    # ---- look-ups ------------------------------------------------------------------------------------------------
    def person(self, name: str) -> Person:
        if name not in self._people:
            raise MiniftError(f"no person called {name!r} in World(seed={self.seed})")
        return self._people[name]

    def town(self, name: str) -> Town:
        if name not in self._towns:
            raise MiniftError(f"no town called {name!r} in World(seed={self.seed})")
        return self._towns[name]

    def residents(self, town: str) -> list[Person]:
        return [p for p in self.people if p.town == town]

    def workers(self, job: str, town: str | None = None) -> list[Person]:
        return [p for p in self.people if p.job.name == job and (town is None or p.town == town)]

    def neighbours(self, town: str) -> tuple[str, str]:
        """The two towns next to `town` on the railway, which runs in a ring through every town."""
        names = [t.name for t in self.towns]
        i = names.index(town)
        return names[i - 1], names[(i + 1) % len(names)]

    def route(self, start: str, end: str) -> list[str]:
        """The towns a train passes from start to end, both included, the shorter way round the ring."""
        names = [t.name for t in self.towns]
        i, j, n = names.index(start), names.index(end), len(names)
        step = 1 if (j - i) % n <= (i - j) % n else -1
        path = [names[i]]
        while path[-1] != end:
            i = (i + step) % n
            path.append(names[i])
        return path

    def minutes(self, a: str, b: str) -> int:
        """Train minutes between neighbouring towns a and b: a fixed fact of the world, 10 to 55 minutes."""
        if frozenset((a, b)) not in self._minutes:
            raise MiniftError(f"{a} and {b} are not next to each other on the railway")
        return self._minutes[frozenset((a, b))]

    def facts(self, name: str) -> dict[str, str]:
        """The person's attributes as plain strings: what the fact-question task asks about."""
        p = self.person(name)
        return {"town": p.town, "job": p.job.name, "pet": p.pet.kind, "pet_name": p.pet_name,
                "friend": p.best_friend, "hobby": p.hobby.doing, "food": p.food, "colour": p.colour,
                "age": str(p.age), "surname": p.surname, "siblings": ", ".join(p.siblings)}

    # ---- documents -----------------------------------------------------------------------------------------------
    def document(self, i: int, seed: int = 0) -> str:
        """Document number i of the stream `seed`: depends only on (world, seed, i)."""
        from .documents import write_document
        return write_document(self, StableRandom(seed, i))

    def iter_documents(self, seed: int = 0, start: int = 0) -> Iterator[str]:
        """An endless stream of documents: document(start), document(start + 1), ..."""
        i = start
        while True:
            yield self.document(i, seed)
            i += 1

    def documents(self, n: int, seed: int = 0) -> list[str]:
        """The first n documents of the stream `seed`."""
        if not isinstance(n, int) or n < 0:
            raise MiniftError(f"n={n!r} documents: expected a non-negative int")
        return [self.document(i, seed) for i in range(n)]


def world_corpus(n_chars: int | None = None, *, n_docs: int | None = None, seed: int = 0,
                 world_seed: int = WORLD_SEED) -> list[str]:
    """Documents about World(world_seed): either n_docs of them, or as many as it takes to reach n_chars characters.

    `seed` picks the document stream; `world_seed` picks the world (keep it at 0 to match the shipped tasks).
    """
    if (n_chars is None) == (n_docs is None):
        raise MiniftError("world_corpus: give exactly one of n_chars or n_docs")
    world = World(world_seed)
    if n_docs is not None:
        return world.documents(n_docs, seed)
    if not isinstance(n_chars, int) or n_chars <= 0:
        raise MiniftError(f"n_chars={n_chars!r}: expected a positive int")
    docs, total = [], 0
    for doc in world.iter_documents(seed):
        docs.append(doc)
        total += len(doc)
        if total >= n_chars:
            return docs


# ---- drawing the world -------------------------------------------------------------------------------------------
def _draw_towns(r: StableRandom, n: int) -> tuple[Town, ...]:
    """n towns in railway order, each with a landscape, a fitting landmark, some places and a cafe."""
    names = r.sample(lx.TOWN_NAMES, n)
    cafe_names = r.sample([f"The {c.title()} {noun}" for c in lx.COLOURS for noun in lx.CAFE_NOUNS], n)
    towns = []
    for i, name in enumerate(names):
        feature = lx.FEATURES[i % len(lx.FEATURES)] if i < len(lx.FEATURES) else r.choice(lx.FEATURES)
        optional = r.sample(lx.OPTIONAL_PLACES, r.randint(6, 9))
        places = lx.ALWAYS_PLACES + tuple(sorted(optional)) + (lx.WATER_PLACES if feature.water else ())
        towns.append(Town(name, r.choice(lx.REGIONS), r.choice(lx.TOWN_SIZES), feature, r.choice(feature.landmarks),
                          places, cafe_names[i], r.choice(lx.DISHES)))
    return tuple(towns)


def _draw_families(r: StableRandom, names: list[str]) -> list[list[str]]:
    """Split the names into families of one to three siblings (as many families as there are surnames, at most)."""
    families, rest = [], list(names)
    while rest:
        size = r.weighted((1, 2, 3), (3, 4, 2))
        if len(families) == len(lx.SURNAMES) - 1:
            size = len(rest)
        families.append(rest[:size])
        rest = rest[size:]
    return families


def _draw_people(r: StableRandom, n: int, towns: tuple[Town, ...]) -> tuple[Person, ...]:
    """n people (half women, half men): families share a surname and often a town; best friends are paired."""
    names = r.sample(lx.FEMALE_NAMES, n // 2) + r.sample(lx.MALE_NAMES, n // 2)
    female = set(names[: n // 2])
    r.shuffle(names)
    families = _draw_families(r, names)
    surnames = r.sample(lx.SURNAMES, len(families))
    people = {}
    for family, surname in zip(families, surnames):
        shared_town = r.choice(towns) if r.chance(0.5) else None
        for name in family:
            town = shared_town or r.choice(towns)
            jobs = [j for j in lx.JOBS if town.has(j.workplace)]
            colour = r.choice(lx.COLOURS)
            objects = r.sample(lx.OBJECTS, 2)
            belongings = ((colour, objects[0]), (r.choice(lx.COLOURS), objects[1]))
            people[name] = Person(
                name=name, surname=surname, female=name in female, age=r.randint(19, 75), town=town.name,
                job=r.choice(jobs), pet=r.choice(lx.PETS), pet_name=r.choice(lx.PET_NAMES), hobby=r.choice(lx.HOBBIES),
                food=r.choice(lx.FOODS), colour=colour, belongings=belongings,
                siblings=tuple(s for s in family if s != name))
    friends = _pair_best_friends(r, names, people)
    return tuple(replace(people[name], best_friend=friends[name]) for name in sorted(names))


def _pair_best_friends(r: StableRandom, names: list[str], people: dict) -> dict[str, str]:
    """A random perfect matching of everyone into best-friend pairs, never pairing two siblings."""
    while True:
        order = r.shuffle(list(names))
        pairs = list(zip(order[::2], order[1::2]))
        if not any(b in people[a].siblings for a, b in pairs):
            return {**{a: b for a, b in pairs}, **{b: a for a, b in pairs}}


def _draw_works(r: StableRandom, people: tuple[Person, ...]) -> tuple[Work, ...]:
    """Twelve films and twelve books with distinct titles; every book has an author from the world."""
    titles = r.sample([f"The {a} {b}" for a in lx.TITLE_ADJECTIVES for b in lx.TITLE_NOUNS], 24)
    films = [Work(t, "film", r.choice(lx.FILM_GENRES)) for t in titles[:12]]
    books = [Work(t, "book", r.choice(lx.BOOK_GENRES), r.choice(people).name) for t in titles[12:]]
    return tuple(films + books)


