"""Synthetic facts for knowledge injection: invented entities, attributes, English/Chinese Q&A.

`make_facts(num_entities, num_sets)` invents landmarks (an English and a Chinese name each, from
fixed syllable and character lists, deterministic under a seed, no name used twice) with four
attributes: the city it is in, the year it was built, its founder and its colour (the city and
founder names are invented too, so no model knows a fact in advance). Each (entity, attribute,
language) is one `Fact`; the entities are split into `num_sets` equal fact sets, one per task
(every fact about an entity, in every language, is in the same set).
`render(fact, "train" | "heldout", index)` turns a fact into a question and its answer; the
held-out paraphrases are for testing only. `fact_text(fact)` is the declarative sentence that a
retrieval store holds. `include_demo=True` makes entity 0 the article's real example, the
Forbidden City ("Where is the Forbidden City?" -> "In Beijing.", "故宫在哪里?" -> "在北京").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

LANGUAGES = ("en", "zh")
ATTRIBUTES = ("place", "year", "founder", "colour")
TEMPLATE_KINDS = ("train", "heldout")

# The question mark is ASCII in both languages, as in the article's "故宫在哪里?".
TEMPLATES = {
    ("en", "place"): {
        "train": ("Where is {e}?", "Where can I find {e}?", "In which city is {e}?"),
        "heldout": ("Which city is {e} located in?", "Tell me where {e} stands."),
        "answer": "In {v}.",
        "text": "{e} is located in the city of {v}.",
    },
    ("en", "year"): {
        "train": ("When was {e} built?", "In what year was {e} built?", "What year is {e} from?"),
        "heldout": ("Which year was {e} completed?", "When did the building of {e} end?"),
        "answer": "In {v}.",
        "text": "{e} was built in the year {v}.",
    },
    ("en", "founder"): {
        "train": ("Who founded {e}?", "Who was the founder of {e}?", "Who is {e} founded by?"),
        "heldout": ("Name the founder of {e}.", "Whose foundation is {e}?"),
        "answer": "{v}.",
        "text": "{e} was founded by {v}.",
    },
    ("en", "colour"): {
        "train": ("What colour is {e}?", "What is the colour of {e}?", "Which colour is {e}?"),
        "heldout": ("What color is {e}?", "Describe the colour of {e}."),
        "answer": "{v}.",
        "text": "The colour of {e} is {v}.",
    },
    ("zh", "place"): {
        "train": ("{e}在哪里?", "{e}在哪儿?", "{e}位于哪座城市?"),
        "heldout": ("请问{e}在什么地方?", "{e}坐落在哪里?"),
        "answer": "在{v}",
        "text": "{e}位于{v}市。",
    },
    ("zh", "year"): {
        "train": ("{e}建于哪一年?", "{e}是哪一年建的?", "{e}是什么时候建的?"),
        "heldout": ("{e}在哪年建成?", "请问{e}的建成年份?"),
        "answer": "{v}年",
        "text": "{e}建于{v}年。",
    },
    ("zh", "founder"): {
        "train": ("{e}是谁创建的?", "谁创建了{e}?", "{e}的创建者是谁?"),
        "heldout": ("{e}由谁创建?", "请问是谁创建了{e}?"),
        "answer": "{v}",
        "text": "{e}由{v}创建。",
    },
    ("zh", "colour"): {
        "train": ("{e}是什么颜色的?", "{e}的颜色是什么?", "{e}是什么颜色?"),
        "heldout": ("请问{e}是哪种颜色?", "{e}呈现什么颜色?"),
        "answer": "{v}",
        "text": "{e}颜色为{v}。",
    },
}

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t")
_ONSETS += ("tr", "v", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m")
_ZH_NAME_CHARS = "安宁青云明华东岭秀春山河平清泰金玉龙凤翠松竹梅兰雪月星光德仁和永嘉丰瑞长乐"
_ZH_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
_ZH_GIVEN_CHARS = "伟芳娜敏静丽强磊军洋勇艳杰涛明超秀霞平刚桂英华玉文建国志"
_KINDS = (
    ("Tower", "塔"),
    ("Bridge", "桥"),
    ("Palace", "宫"),
    ("Hall", "楼"),
    ("Garden", "园"),
    ("Temple", "寺"),
    ("Library", "书院"),
    ("Gate", "门"),
)
_COLOURS = (
    ("red", "红色"),
    ("blue", "蓝色"),
    ("green", "绿色"),
    ("yellow", "黄色"),
    ("white", "白色"),
    ("black", "黑色"),
    ("purple", "紫色"),
    ("grey", "灰色"),
)
_YEARS = (1200, 2000)
# The article's example, with its other attributes filled in from history.
_DEMO = {
    "name": ("the Forbidden City", "故宫"),
    "place": ("Beijing", "北京"),
    "year": ("1420", "1420"),
    "founder": ("the Yongle Emperor", "永乐皇帝"),
    "colour": ("red", "红色"),
}


class Fact(NamedTuple):
    """One attribute of one entity in one language; names and value are in that language."""

    entity: str
    attribute: str
    value: str
    language: str
    entity_id: int


class FactBank(NamedTuple):
    """Facts split into equal sets that arrive as tasks; `facts` is every set in order. `reader`
    holds the facts of further entities, disjoint from the sets (to train a model to read)."""

    sets: tuple[tuple[Fact, ...], ...]
    languages: tuple[str, ...]
    reader: tuple[Fact, ...] = ()

    @property
    def facts(self) -> tuple[Fact, ...]:
        """All facts, set after set: a fact's position here is its index in `sentences()`."""
        return tuple(fact for fact_set in self.sets for fact in fact_set)

    def sentences(self) -> list[str]:
        """The retrieval store: `fact_text` of every fact, in the order of `facts`."""
        return [fact_text(fact) for fact in self.facts]


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"unknown template language {language!r}; known: {', '.join(LANGUAGES)}")


def _templates(fact: Fact, template_kind: str = "train") -> dict:
    _check_language(fact.language)
    if template_kind not in TEMPLATE_KINDS:
        raise ValueError(f"template_kind must be 'train' or 'heldout', got {template_kind!r}")
    if fact.attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {fact.attribute!r}; known: {', '.join(ATTRIBUTES)}")
    return TEMPLATES[fact.language, fact.attribute]


def _sentence(text: str) -> str:
    """Capitalise the first letter ("the Forbidden City" opens a sentence as "The ...")."""
    return text[:1].upper() + text[1:]


def render(fact: Fact, template_kind: str = "train", index: int = 0) -> tuple[str, str]:
    """The question of template `index` of `template_kind` ("train" | "heldout"), and the answer."""
    templates = _templates(fact, template_kind)
    questions = templates[template_kind]
    if not 0 <= index < len(questions):
        raise ValueError(f"index must be in 0..{len(questions) - 1}, got {index}")
    question = _sentence(questions[index].format(e=fact.entity))
    return question, _sentence(templates["answer"].format(v=fact.value))


def renderings(fact: Fact, template_kind: str = "train") -> list[tuple[str, str]]:
    """Every (question, answer) of `template_kind` for one fact."""
    count = len(_templates(fact, template_kind)[template_kind])
    return [render(fact, template_kind, i) for i in range(count)]


def fact_text(fact: Fact) -> str:
    """The fact as one sentence for the retrieval store ("故宫位于北京市。")."""
    return _sentence(_templates(fact)["text"].format(e=fact.entity, v=fact.value))


def _english_word(rng: np.random.Generator) -> str:
    syllables = int(rng.integers(2, 4))
    parts = [
        _ONSETS[rng.integers(len(_ONSETS))]
        + _VOWELS[rng.integers(len(_VOWELS))]
        + _CODAS[rng.integers(len(_CODAS))]
        for _ in range(syllables)
    ]
    return "".join(parts).capitalize()


def _chars(rng: np.random.Generator, pool: str, count: int) -> str:
    return "".join(pool[i] for i in rng.integers(len(pool), size=count))


def _distinct(rng: np.random.Generator, count: int, make, taken: set[str], what: str) -> list[str]:
    """`count` names from `make(rng)`, none in `taken` (which grows) nor repeated."""
    names: list[str] = []
    for _ in range(100 * count + 100):
        if len(names) == count:
            break
        name = make(rng)
        if name not in taken:
            taken.add(name)
            names.append(name)
    if len(names) < count:
        raise ValueError(f"cannot invent {count} distinct {what}; ask for fewer entities")
    return names


def _bilingual(rng, count, make_en, make_zh, taken, what) -> list[tuple[str, str]]:
    english = _distinct(rng, count, make_en, taken["en"], f"English {what}")
    chinese = _distinct(rng, count, make_zh, taken["zh"], f"Chinese {what}")
    return list(zip(english, chinese, strict=True))


def _invent(rng: np.random.Generator, count: int, taken: dict) -> list[dict]:
    """`count` landmarks with invented names, cities and founders (none in `taken`, which grows)
    and a year and colour each; every name in both languages, as (English, Chinese)."""
    kinds = [_KINDS[i] for i in rng.integers(len(_KINDS), size=count)]
    names = []
    for english_kind, chinese_kind in kinds:
        names += _bilingual(
            rng,
            1,
            lambda r, k=english_kind: f"{_english_word(r)} {k}",
            lambda r, k=chinese_kind: _chars(r, _ZH_NAME_CHARS, 2) + k,
            taken,
            "landmark names",
        )
    places = _bilingual(
        rng,
        max(4, count // 4),
        _english_word,
        lambda r: _chars(r, _ZH_NAME_CHARS, 2),
        taken,
        "city names",
    )
    founders = _bilingual(
        rng,
        count,
        lambda r: f"{_english_word(r)} {_english_word(r)}",
        lambda r: _chars(r, _ZH_SURNAMES, 1) + _chars(r, _ZH_GIVEN_CHARS, int(r.integers(1, 3))),
        taken,
        "founder names",
    )
    entities = []
    for i in range(count):
        year = str(int(rng.integers(*_YEARS)))
        entities.append(
            {
                "name": names[i],
                "place": places[rng.integers(len(places))],
                "year": (year, year),
                "founder": founders[i],
                "colour": _COLOURS[rng.integers(len(_COLOURS))],
            }
        )
    return entities


def make_facts(
    num_entities: int,
    num_sets: int,
    languages: tuple[str, ...] = LANGUAGES,
    seed: int = 0,
    include_demo: bool = False,
    reader_entities: int = 0,
) -> FactBank:
    """Invent `num_entities` landmarks with four attributes each, split into `num_sets` sets, and
    `reader_entities` more whose facts are the bank's `reader` facts."""
    if isinstance(reader_entities, bool) or not isinstance(reader_entities, int):
        raise ValueError(f"reader_entities must be an integer, got {reader_entities!r}")
    if reader_entities < 0:
        raise ValueError(f"reader_entities must be >= 0, got {reader_entities}")
    if num_entities < 1:
        raise ValueError(
            f"the fact store would be empty: num_entities must be >= 1, got {num_entities}"
        )
    if not 1 <= num_sets <= num_entities:
        raise ValueError(f"num_sets must be in 1..num_entities ({num_entities}), got {num_sets}")
    if num_entities % num_sets:
        raise ValueError(
            f"num_sets ({num_sets}) must divide num_entities ({num_entities}) "
            "so that every fact set, and so every task, has the same size"
        )
    languages = tuple(languages)
    if not languages or len(set(languages)) != len(languages):
        raise ValueError(f"languages must be non-empty and distinct, got {languages}")
    for language in languages:
        _check_language(language)

    taken = {"en": set(), "zh": set()}
    for key in ("name", "place", "founder"):
        taken["en"].add(_DEMO[key][0])
        taken["zh"].add(_DEMO[key][1])
    entities = _invent(np.random.default_rng(seed), num_entities, taken)
    if reader_entities:  # their own generator: the sets do not depend on how many there are
        entities += _invent(np.random.default_rng([seed, 1]), reader_entities, taken)
    if include_demo:
        entities[0] = _DEMO

    facts = [
        Fact(entity["name"][column], attribute, entity[attribute][column], language, i)
        for i, entity in enumerate(entities)
        for language, column in ((lang, LANGUAGES.index(lang)) for lang in languages)
        for attribute in ATTRIBUTES
    ]
    split = num_entities * len(languages) * len(ATTRIBUTES)  # facts go entity by entity
    facts, reader = facts[:split], facts[split:]
    per_set = len(facts) // num_sets
    sets = tuple(tuple(facts[s * per_set : (s + 1) * per_set]) for s in range(num_sets))
    return FactBank(sets, languages, tuple(reader))
