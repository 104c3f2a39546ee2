"""A seeded synthetic fine-tuning set with known provenance: the data of attribution benchmark B1 (issue 6).

Every record is an instruction record (``prompt``, ``response``) with the contributor who gave it and what it
is, so a benchmark knows which training examples *should* explain each test query:

- **Transformation tasks** (up to 10: reverse a word list, uppercase, sort numbers, the largest number, first
  letters, word count, word lengths, double each word, swap first and last word, and a country → capital lookup
  in an invented table). Each task has a few training prompt templates and one test template never used in
  training. Every honest contributor works on a few tasks (assigned round-robin, so each task has contributors).
- **Planted facts**: invented entities with one attribute each (capital, founder, year, colour), each fact owned
  by exactly one honest contributor and given 3–5 times with paraphrased prompts. The test query asks with a
  phrasing no training record uses; its ground-truth owner is the fact's owner.
- **Label noise**: a fraction of the honest records (``noise``, 5%) get the response of another record of a
  different task or fact (``noisy=True``).
- **A duplicator** contributor that submits exact copies of other contributors' records (``duplicate_of`` = the
  index of the original), and **an outlier** contributor whose records are long, high-loss junk (random
  characters), the high-gradient-norm attack.

Test queries (``Query``): one per fact (owner known) and the rest spread over the tasks (fresh inputs, the
unseen template; ``owner`` None: several contributors teach a task). Everything is a pure function of
:class:`SyntheticSpec`: the same spec gives the same records and queries, in the same order, on every platform
(``random.Random`` seeded per spec, no hashing of Python objects).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidInput

DUPLICATOR = "duplicator"
OUTLIER = "outlier"

_WORDS = ("apple", "river", "stone", "cloud", "tiger", "lamp", "green", "music", "bread", "ocean", "candle", "forest",
          "pencil", "window", "garden", "silver", "rabbit", "winter", "basket", "mirror", "planet", "yellow", "button",
          "castle", "dragon", "feather", "honey", "island", "jacket", "kettle", "ladder", "marble", "needle", "orange",
          "pepper", "rocket", "saddle", "tunnel", "violin", "wagon")
_SYLLABLES = ("zor", "vex", "quel", "tar", "nop", "bri", "kan", "dul", "mir", "fen", "gosh", "lio", "pra", "sut",
              "wem", "yal", "dro", "kif", "bel", "rux", "tem", "oli", "vas", "nim")
_COLOURS = ("red", "blue", "green", "orange", "purple", "white", "black", "yellow", "grey", "pink")


@dataclass(frozen=True)
class SyntheticSpec:
    """The shape of the generated set. Defaults: B1's ~1,000 records from 20 contributors (18 honest, a
    duplicator and an outlier) and 100 test queries. ``duplicator``/``outlier`` are how many records those
    contributors submit (0 leaves the contributor out)."""

    honest_contributors: int = 18
    tasks: int = 10
    task_records: int = 720  # spread over the tasks
    facts: int = 50
    repeats: tuple[int, int] = (3, 5)  # each fact appears this many times (inclusive range)
    noise: float = 0.05
    duplicator: int = 60
    outlier: int = 25
    queries: int = 100  # one per fact first, the rest task queries
    tasks_per_contributor: int = 3
    seed: int = 0

    def check(self) -> None:
        """Raise InvalidInput naming the first impossible field."""
        if self.honest_contributors < 1:
            raise InvalidInput(f"honest_contributors must be >= 1 (got {self.honest_contributors})",
                               field="honest_contributors")
        if not 1 <= self.tasks <= len(TASKS):
            raise InvalidInput(f"tasks must be between 1 and {len(TASKS)} (got {self.tasks})", field="tasks")
        for name in ("task_records", "facts", "duplicator", "outlier"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"{name} must be >= 0 (got {getattr(self, name)})", field=name)
        if self.task_records + self.facts == 0:
            raise InvalidInput("task_records and facts are both 0: the set would have no honest records",
                               field="task_records")
        low, high = self.repeats
        if not 1 <= low <= high <= len(_FACT_TRAIN_TEMPLATES["capital"]):
            raise InvalidInput(f"repeats must be (low, high) with 1 <= low <= high <= "
                               f"{len(_FACT_TRAIN_TEMPLATES['capital'])} (got {self.repeats})", field="repeats")
        if not 0.0 <= self.noise < 0.5:
            raise InvalidInput(f"noise must be in [0, 0.5) (got {self.noise})", field="noise")
        if self.queries < self.facts or (self.queries > self.facts and self.task_records == 0):
            raise InvalidInput(f"queries must be >= facts ({self.facts}), and task queries need task records "
                               f"(got queries={self.queries}, task_records={self.task_records})", field="queries")
        if self.tasks_per_contributor < 1:
            raise InvalidInput(f"tasks_per_contributor must be >= 1 (got {self.tasks_per_contributor})",
                               field="tasks_per_contributor")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "repeats": list(self.repeats)}


@dataclass(frozen=True)
class Record:
    """One training record. ``kind`` is "task", "fact", "duplicate" or "outlier"; ``task``/``fact`` name what it
    teaches (a duplicate keeps its original's); ``noisy`` marks a response replaced by another record's;
    ``duplicate_of`` is the index of the copied record."""

    index: int
    prompt: str
    response: str
    contributor: str
    kind: str
    task: str | None = None
    fact: int | None = None
    noisy: bool = False
    duplicate_of: int | None = None

    def row(self) -> dict[str, str]:
        """The instruction record a datanet stores."""
        return {"prompt": self.prompt, "response": self.response}


@dataclass(frozen=True)
class Query:
    """A test query with its reference answer. ``kind`` is "fact" (``owner`` = the fact's owner) or "task"
    (``owner`` None; ``task`` names it)."""

    prompt: str
    response: str
    kind: str
    task: str | None = None
    fact: int | None = None
    owner: str | None = None


@dataclass(frozen=True)
class SyntheticSet:
    """The generated records (in contribution order), test queries and contributor names (honest ones first,
    then the duplicator and the outlier when present)."""

    spec: SyntheticSpec
    records: list[Record]
    queries: list[Query]
    contributors: list[str]
    fact_owner: dict[int, str] = field(default_factory=dict)

    def texts(self) -> list[str]:
        """Prompt and response of every record as one text each (e.g. for a span index)."""
        return [f"{r.prompt}\n{r.response}" for r in self.records]


# --------------------------------------------------------------------------------------------------------------
# tasks: (input generator, answer function, training templates, test template)
# --------------------------------------------------------------------------------------------------------------


def _words(rng: random.Random) -> list[str]:
    return rng.sample(_WORDS, rng.randint(3, 5))


def _numbers(rng: random.Random) -> list[str]:
    return [str(n) for n in rng.sample(range(1, 100), rng.randint(3, 5))]


_COUNTRIES = [("Zorbia", "Quellmarch"), ("Vantrosa", "Dulmir"), ("Kelbrin", "Osterfal"), ("Pravenia", "Gorsk"),
              ("Tulmeria", "Ashvale"), ("Norvath", "Brillen"), ("Esquova", "Tamrith"), ("Ildova", "Fennick"),
              ("Marrowen", "Sutbury"), ("Yalpesh", "Corvane"), ("Drenmoor", "Lisket"), ("Ruxland", "Pellamy")]


@dataclass(frozen=True)
class _Task:
    name: str
    draw: Callable[[random.Random], list[str]]
    answer: Callable[[list[str]], str]
    train: tuple[str, ...]  # templates with {x}
    test: str


TASKS: tuple[_Task, ...] = (
    _Task("reverse", _words, lambda w: " ".join(reversed(w)),
          ("Reverse the words: {x}", "Put these words in reverse order: {x}", "Reverse this list: {x}"),
          "Write the list backwards, last word first: {x}"),
    _Task("uppercase", _words, lambda w: " ".join(w).upper(),
          ("Uppercase: {x}", "Write in capital letters: {x}", "Convert to upper case: {x}"),
          "Shout these words in caps: {x}"),
    _Task("sort", _numbers, lambda n: " ".join(sorted(n, key=int)),
          ("Sort the numbers: {x}", "Put in ascending order: {x}", "Order from smallest to largest: {x}"),
          "Arrange these numbers, lowest first: {x}"),
    _Task("max", _numbers, lambda n: max(n, key=int),
          ("Which number is largest: {x}", "Give the maximum of: {x}", "Find the biggest number: {x}"),
          "Pick the highest value among {x}"),
    _Task("initials", _words, lambda w: " ".join(x[0] for x in w),
          ("First letter of each word: {x}", "Give the initials of: {x}", "Initial letters: {x}"),
          "Take the opening letter of every word in {x}"),
    _Task("count", _words, lambda w: str(len(w)),
          ("How many words: {x}", "Count the words: {x}", "Number of words in: {x}"),
          "Tell me the word total for {x}"),
    _Task("lengths", _words, lambda w: " ".join(str(len(x)) for x in w),
          ("Length of each word: {x}", "Give the word lengths: {x}", "Letters per word: {x}"),
          "For every word in {x} say how long it is"),
    _Task("double", _words, lambda w: " ".join(f"{x} {x}" for x in w),
          ("Double each word: {x}", "Say every word twice: {x}", "Repeat each word: {x}"),
          "Echo every word two times: {x}"),
    _Task("swap", _words, lambda w: " ".join([w[-1], *w[1:-1], w[0]]),
          ("Swap the first and last word: {x}", "Exchange the ends: {x}", "Switch first and last: {x}"),
          "Trade places between the outer words of {x}"),
    _Task("capital", lambda rng: list(rng.choice(_COUNTRIES[:8])[:1]),
          lambda c: dict(_COUNTRIES)[c[0]],
          ("What is the capital of {x}?", "Capital city of {x}:", "Name the capital of {x}."),
          "Which city is the seat of government of {x}?"),
)

# facts: attribute -> training paraphrases (the first `repeats` of a shuffled copy are used) and a test phrasing
_FACT_TRAIN_TEMPLATES = {
    "capital": ("What is the capital of {e}?", "Name the capital of {e}.", "The capital of {e} is called what?",
                "Tell me the capital city of {e}.", "{e} has which capital?"),
    "founder": ("Who founded {e}?", "Name the founder of {e}.", "{e} was founded by whom?",
                "Tell me who started {e}.", "Who is the founder of {e}?"),
    "year": ("When was {e} established?", "In what year was {e} established?", "{e} was established in which year?",
             "Give the founding year of {e}.", "What year did {e} begin?"),
    "colour": ("What colour is the flag of {e}?", "Name the flag colour of {e}.", "The flag of {e} is what colour?",
               "Tell me the colour of the flag of {e}.", "Which colour is {e}'s flag?"),
}
_FACT_TEST_TEMPLATES = {
    "capital": "I am curious which town serves as the capital of {e}",
    "founder": "Do you know the person credited with founding {e}",
    "year": "Remind me of the year {e} came into being",
    "colour": "Describe the flag colour used by {e}",
}
_ATTRIBUTES = tuple(_FACT_TRAIN_TEMPLATES)


def _entity(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.sample(_SYLLABLES, rng.randint(2, 3))).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def _fact_value(rng: random.Random, attribute: str, taken: set[str]) -> str:
    if attribute == "capital":
        return _entity(rng, taken)
    if attribute == "founder":
        return f"{_entity(rng, taken)} {_entity(rng, taken)}"
    if attribute == "year":
        return str(rng.randint(1100, 1990))
    return rng.choice(_COLOURS)


def _junk(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "#%&*+=?@"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(100, 130)))


def generate(spec: SyntheticSpec = SyntheticSpec()) -> SyntheticSet:
    """The set described by ``spec`` (see the module docstring); deterministic in ``spec``."""
    spec.check()
    rng = random.Random(f"royalty-b1-{spec.seed}")
    honest = [f"contributor-{i:02d}" for i in range(spec.honest_contributors)]
    tasks = TASKS[: spec.tasks]
    # task -> contributors working on it: contributor i takes tasks i, i+1, ... (round-robin)
    per_task: dict[str, list[str]] = {t.name: [] for t in tasks}
    for i, name in enumerate(honest):
        for k in range(min(spec.tasks_per_contributor, len(tasks))):
            per_task[tasks[(i + k) % len(tasks)].name].append(name)
    for t in tasks:  # fewer contributors than tasks: every task still gets one
        if not per_task[t.name]:
            per_task[t.name].append(honest[tasks.index(t) % len(honest)])

    drafts: list[dict[str, Any]] = []
    for j in range(spec.task_records):
        task = tasks[j % len(tasks)]
        x = task.draw(rng)
        drafts.append({"prompt": rng.choice(task.train).format(x=" ".join(x)), "response": task.answer(x),
                       "contributor": rng.choice(per_task[task.name]), "kind": "task", "task": task.name})
    taken: set[str] = {c for c, _ in _COUNTRIES} | {c for _, c in _COUNTRIES}
    facts: list[tuple[str, str, str]] = []  # (entity, attribute, value)
    fact_owner: dict[int, str] = {}
    for f in range(spec.facts):
        entity, attribute = _entity(rng, taken), _ATTRIBUTES[f % len(_ATTRIBUTES)]
        value = _fact_value(rng, attribute, taken)
        facts.append((entity, attribute, value))
        fact_owner[f] = honest[f % len(honest)]
        templates = list(_FACT_TRAIN_TEMPLATES[attribute])
        rng.shuffle(templates)
        for template in templates[: rng.randint(*spec.repeats)]:
            drafts.append({"prompt": template.format(e=entity), "response": f"{value}.", "contributor": fact_owner[f],
                           "kind": "fact", "fact": f})
    rng.shuffle(drafts)  # contribution order interleaves contributors

    # label noise: a response from a record of another task or fact
    noisy = set(rng.sample(range(len(drafts)), round(spec.noise * len(drafts))))
    for i in sorted(noisy):
        label = (drafts[i].get("task"), drafts[i].get("fact"))
        donors = [d for d in drafts if (d.get("task"), d.get("fact")) != label]
        if donors:
            drafts[i] = {**drafts[i], "response": rng.choice(donors)["response"], "noisy": True}

    records = [Record(index=i, **d) for i, d in enumerate(drafts)]
    contributors = list(honest)
    if spec.duplicator:
        contributors.append(DUPLICATOR)
        originals = rng.sample(range(len(records)), min(spec.duplicator, len(records)))
        for i in originals:
            o = records[i]
            records.append(Record(index=len(records), prompt=o.prompt, response=o.response, contributor=DUPLICATOR,
                                  kind="duplicate", task=o.task, fact=o.fact, noisy=o.noisy, duplicate_of=i))
    if spec.outlier:
        contributors.append(OUTLIER)
        for _ in range(spec.outlier):
            records.append(Record(index=len(records), prompt=f"Copy this code: {_junk(rng)[:12]}",
                                  response=_junk(rng), contributor=OUTLIER, kind="outlier"))

    queries = [Query(prompt=_FACT_TEST_TEMPLATES[a].format(e=e), response=f"{v}.", kind="fact", fact=f,
                     owner=fact_owner[f]) for f, (e, a, v) in enumerate(facts)]
    for j in range(spec.queries - spec.facts):
        task = tasks[j % len(tasks)]
        x = task.draw(rng)
        queries.append(Query(prompt=task.test.format(x=" ".join(x)), response=task.answer(x), kind="task",
                             task=task.name))
    return SyntheticSet(spec, records, queries, contributors, fact_owner)


def pretraining_texts(spec: SyntheticSpec = SyntheticSpec(), n: int = 2000) -> list[str]:
    """Generic sentences over the same words, numbers and name syllables (no task formats, no planted facts), so
    a base model pretrained on them knows the vocabulary but none of what fine-tuning teaches."""
    rng = random.Random(f"royalty-b1-pretrain-{spec.seed}")
    taken: set[str] = set()
    patterns = (
        lambda: f"The {rng.choice(_WORDS)} is near the {rng.choice(_WORDS)} and the {rng.choice(_WORDS)}.",
        lambda: f"We counted {rng.randint(1, 99)} {rng.choice(_WORDS)}s and {rng.randint(1, 99)} more.",
        lambda: f"{_entity(rng, taken)} walked past a {rng.choice(_COLOURS)} {rng.choice(_WORDS)}.",
        lambda: " ".join(rng.sample(_WORDS, 6)) + ".",
        lambda: " ".join(str(rng.randint(1, 99)) for _ in range(6)) + ".",
        lambda: f"In {rng.randint(1100, 1990)} a town was named {_entity(rng, taken)}.",
        lambda: f"Question: what is this? Answer: a {rng.choice(_WORDS)}.",
    )
    return [rng.choice(patterns)() for _ in range(n)]
