"""Generated instruction data for skills a small model can learn from a few thousand examples.

Each skill makes problems from a seeded random generator: an instruction (the user's message) and the one right
answer (the assistant's). A problem is identified by its content (the passage and question, the list, the two
numbers), not by its wording, and every content key goes to exactly one of train and test (by a hash of the key),
so a test problem is never seen in training under another phrasing.

- ``span``: answer a question about a two-sentence passage by copying the span (who, what, where, when);
- ``reverse``: reverse a list of 3 to 5 words;
- ``sort``: sort 3 to 6 distinct digits in ascending order;
- ``add``: add two numbers from 0 to 19;
- ``repeat``: a format instruction, write a word n times separated by commas.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from typing import NamedTuple

NAMES = ["Mary", "John", "Anne", "Peter", "Emma", "James", "Lucy", "Henry", "Jane", "George", "Alice", "Thomas"]
PLACES = ["garden", "market", "church", "river", "castle", "village", "forest", "harbour", "school", "mill"]
OBJECTS = ["lamp", "book", "letter", "basket", "sword", "ring", "horse", "bottle", "coat", "map"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WORDS = [
    "cat", "dog", "sun", "moon", "tree", "ship", "bird", "fish", "house", "king", "queen", "road",
    "stone", "fire", "water", "bread", "gold", "night", "hand", "door", "sea", "wind", "rose", "bell",
]  # fmt: skip
COUNTS = {2: "two", 3: "three", 4: "four", 5: "five"}


class Problem(NamedTuple):
    skill: str
    key: str  # what the problem is, independent of its wording
    prompt: str
    answer: str


def _span(rng: random.Random) -> Problem:
    a, b = rng.sample(NAMES, 2)
    obj, place, day = rng.choice(OBJECTS), rng.choice(PLACES), rng.choice(DAYS)
    other = rng.choice([p for p in PLACES if p != place])
    passage = f"{a} took the {obj} to the {place} on {day}. {b} stayed at the {other}."
    q, answer = rng.choice(
        [
            (f"Who took the {obj} to the {place}?", a),
            (f"What did {a} take to the {place}?", f"the {obj}"),
            (f"Where did {a} take the {obj}?", f"the {place}"),
            (f"When did {a} go to the {place}?", day),
            (f"Where did {b} stay?", f"the {other}"),
        ]
    )
    prompt = rng.choice(["Passage: {p}\nQuestion: {q}", "Read the passage and answer.\n{p}\n{q}"])
    return Problem("span", f"{passage}|{q}", prompt.format(p=passage, q=q), answer)


def _reverse(rng: random.Random) -> Problem:
    items = rng.sample(WORDS, rng.randint(3, 5))
    text = ", ".join(items)
    prompt = rng.choice(["Reverse the list: {x}", "Write these words in reverse order: {x}"]).format(x=text)
    return Problem("reverse", text, prompt, ", ".join(reversed(items)))


def _sort(rng: random.Random) -> Problem:
    digits = rng.sample(range(10), rng.randint(3, 6))
    text = ", ".join(map(str, digits))
    prompt = rng.choice(["Sort the numbers: {x}", "Put these numbers in increasing order: {x}"]).format(x=text)
    return Problem("sort", text, prompt, ", ".join(map(str, sorted(digits))))


def _add(rng: random.Random) -> Problem:
    a, b = rng.randint(0, 19), rng.randint(0, 19)
    prompt = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} plus {b}."]).format(a=a, b=b)
    return Problem("add", f"{a}+{b}", prompt, str(a + b))


def _repeat(rng: random.Random) -> Problem:
    word, n = rng.choice(WORDS), rng.choice(list(COUNTS))
    prompt = rng.choice(
        ["Repeat the word {w} {n} times, separated by commas.", "Write {w} {n} times, with commas between."]
    ).format(w=word, n=COUNTS[n])
    return Problem("repeat", f"{word}*{n}", prompt, ", ".join([word] * n))


SKILLS: dict[str, Callable[[random.Random], Problem]] = {
    "span": _span,
    "reverse": _reverse,
    "sort": _sort,
    "add": _add,
    "repeat": _repeat,
}


def in_test(key: str, fraction: float) -> bool:
    """Whether the problem with content ``key`` belongs to the test side (a fixed hash, not the seed)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def make_split(
    per_skill: int | Mapping[str, int], *, test: bool, seed: int, test_fraction: float = 0.2
) -> list[Problem]:
    """``per_skill`` problems of each skill (one count for all, or a count per skill name) from one side of the
    train/test split. Problems may repeat on the train side, whose content space can be small; the test side
    has distinct problems where it can."""
    counts = per_skill if isinstance(per_skill, Mapping) else dict.fromkeys(SKILLS, per_skill)
    unknown = set(counts) - set(SKILLS)
    if unknown:
        raise ValueError(f"unknown skills {sorted(unknown)}")
    rng = random.Random(f"{seed}-{'test' if test else 'train'}")
    out: list[Problem] = []
    for skill, make in SKILLS.items():
        want = counts.get(skill, 0)
        seen: set[str] = set()
        got: list[Problem] = []
        tries = 0
        while len(got) < want and tries < 200 * want:
            tries += 1
            p = make(rng)
            if in_test(p.key, test_fraction) != test or (test and p.key in seen):
                continue
            seen.add(p.key)
            got.append(p)
        out += got
    rng.shuffle(out)
    return out
