"""A generated knowledge base of fictional people: facts no model can know from pretraining.

Each person has a made-up name (first and last names drawn from syllables, so the parts repeat across people but
every full name is unique), a home among made-up towns, a birth year, a profession, an instrument and a pet
with a made-up name. Their passage states the five facts in shuffled order; each fact has one question. The
answers are words a reader must copy from a passage: for a person it never saw, a closed-book answer is a guess,
and its chance of being right is one over the number of values the attribute takes (about 0 for the pet's name).
The reader's pretraining text is each training person's passage followed by its questions and answers
(``qa_text``), the way reading-comprehension data teaches a model to look an answer up in its context.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v",
           "w", "z"]  # fmt: skip
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ou", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "x", "nd"]
_TOWN_ENDS = ["mere", "holt", "wick", "ford", "dale", "stead", "moor", "haven"]
PROFESSIONS = ["glassblower", "cartographer", "beekeeper", "clockmaker", "ferryman", "lacemaker", "astronomer",
               "blacksmith", "bookbinder", "chandler", "cooper", "dyer", "engraver", "falconer", "gardener",
               "herbalist", "jeweller", "locksmith", "mason", "miller", "potter", "saddler", "shipwright",
               "tanner", "thatcher", "violinmaker", "weaver", "wheelwright", "brewer", "baker"]  # fmt: skip
INSTRUMENTS = ["oboe", "harp", "cello", "lute", "flute", "viola", "bassoon", "clarinet", "trumpet", "zither",
               "mandolin", "accordion", "banjo", "dulcimer", "harmonica", "piccolo", "tuba", "sitar", "fiddle",
               "bagpipes"]  # fmt: skip
PETS = ["heron", "ferret", "tortoise", "parrot", "goat", "hedgehog", "raven", "donkey", "owl", "lizard"]
YEARS = range(1700, 2000)
N_TOWNS = 60

# attribute: (the fact as a sentence, its question); {n} the name, {v} the value, {p} the pet
FACTS = {
    "town": ("{n} lives in the town of {v}.", "In which town does {n} live?"),
    "year": ("{n} was born in {v}.", "In which year was {n} born?"),
    "profession": ("{n} works as a {v}.", "What does {n} work as?"),
    "instrument": ("{n} plays the {v}.", "Which instrument does {n} play?"),
    "pet": ("{n} keeps a {p} named {v}.", "What is the name of the {p} that {n} keeps?"),
}


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    facts: dict[str, str]  # attribute -> value
    pet: str
    order: tuple[str, ...]  # the order of the facts in the passage

    def fact(self, attribute: str) -> str:
        """One fact as a sentence that names the person: the knowledge base's unit (a chunk of its own)."""
        return FACTS[attribute][0].format(n=self.name, v=self.facts[attribute], p=self.pet)

    def passage(self) -> str:
        """All five facts in ``order``."""
        return " ".join(self.fact(a) for a in self.order)

    def qa_text(self) -> str:
        """The passage followed by its questions and answers, in the reader's "Question: ... Answer: ..." form: a
        pretraining document that teaches reading an answer off the text above it."""
        return self.passage() + "".join(f"\nQuestion: {self.question(a)}\nAnswer: {self.facts[a]}" for a in FACTS)

    def question(self, attribute: str) -> str:
        return FACTS[attribute][1].format(n=self.name, p=self.pet)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def _unique_words(rng: random.Random, n: int, syllables: tuple[int, ...], suffixes: list[str] = ("",)) -> list[str]:
    out: dict[str, None] = {}
    while len(out) < n:
        out[(_word(rng, rng.choice(syllables)) + rng.choice(suffixes)).capitalize()] = None
    return list(out)


def chance(attribute: str) -> float:
    """The chance that a uniform guess among the attribute's values is right."""
    sizes = {"town": N_TOWNS, "year": len(YEARS), "profession": len(PROFESSIONS), "instrument": len(INSTRUMENTS)}
    return 1 / sizes[attribute] if attribute in sizes else 0.0


def make_people(n: int, seed: int) -> list[Person]:
    """``n`` people with unique names, generated from ``seed``."""
    rng = random.Random(seed)
    towns = _unique_words(rng, N_TOWNS, (1, 2), _TOWN_ENDS)
    firsts = _unique_words(rng, max(40, n // 8), (2,))
    lasts = _unique_words(rng, max(60, n // 5), (2, 3))
    pet_names = _unique_words(rng, max(200, n), (1, 2))
    names: dict[str, None] = {}
    while len(names) < n:
        names[f"{rng.choice(firsts)} {rng.choice(lasts)}"] = None
    people = []
    for i, name in enumerate(names):
        facts = {
            "town": rng.choice(towns),
            "year": str(rng.choice(YEARS)),
            "profession": rng.choice(PROFESSIONS),
            "instrument": rng.choice(INSTRUMENTS),
            "pet": rng.choice(pet_names),
        }
        order = list(FACTS)
        rng.shuffle(order)
        people.append(Person(f"p{i:05d}", name, facts, rng.choice(PETS), tuple(order)))
    return people
