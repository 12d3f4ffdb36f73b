"""Probe questions: well-known facts and simple skills a small instruct model may have learnt in
pretraining, asked before and after fine-tuning to see what the fine-tuning took away.

Written for this project (not taken from a dataset): world capitals and geography, simple
arithmetic, colours, counts and units, days and months, opposites, science and nature, animals,
grammar and languages, famous people. Every answer is short (one to three words, or a number in
digits), capitalised as the first word of a reply, without a final full stop.

How an answer is judged: the question is asked in the model's chat format after the system
message SYSTEM and the demonstration turns SHOTS (continual.streams.pretrained.chat_prompt), and
the greedy answer is right when it is exactly the tokens of `answer` followed by the end of turn
(`<|im_end|>`, SmolLM2's eos): "Paris<|im_end|>" is right, "The capital of France is
Paris.<|im_end|>", "Paris.<|im_end|>" and "paris<|im_end|>" are not. `also` lists other forms
a reader would accept; `accepts` judges a decoded text by them, but the stream's metric (one
teacher-forced pass) reads `answer` alone.

Why the demonstrations: SmolLM2-135M-Instruct answers in a sentence ("The capital of France is
Paris.") whatever the system message asks (0 of 90 questions answered in one word with
"Answer with one word or number." alone); after six demonstration turns it answers most
questions in a word. Which probes the base model gets right is measured, not assumed: the
experiment keeps those (continual.streams.pretrained.known_probes).
"""

from __future__ import annotations

from typing import NamedTuple

SYSTEM = "Answer with one word or number."
# Demonstration turns (question, answer) before every question; none of them is a probe.
SHOTS = (
    ("What is the capital of Peru?", "Lima"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("How many legs does a bird have?", "2"),
    ("What is the opposite of wet?", "Dry"),
    ("Which metal is liquid at room temperature?", "Mercury"),
    ("What colour is a carrot?", "Orange"),
)


class Probe(NamedTuple):
    """One question, its canonical answer, its kind, and other accepted forms of the answer."""

    question: str
    answer: str
    kind: str
    also: tuple[str, ...] = ()


def _kind(kind: str, *pairs) -> list[Probe]:
    return [Probe(q, a, kind, tuple(also)) for q, a, *also in pairs]


PROBES: tuple[Probe, ...] = tuple(
    _kind(
        "capital",
        *(
            (f"What is the capital of {country}?", city)
            for country, city in (
                ("France", "Paris"),
                ("Japan", "Tokyo"),
                ("Italy", "Rome"),
                ("Germany", "Berlin"),
                ("Spain", "Madrid"),
                ("the United Kingdom", "London"),
                ("Russia", "Moscow"),
                ("China", "Beijing"),
                ("Egypt", "Cairo"),
                ("Canada", "Ottawa"),
                ("Australia", "Canberra"),
                ("Greece", "Athens"),
                ("Ireland", "Dublin"),
                ("Sweden", "Stockholm"),
                ("Austria", "Vienna"),
                ("Mexico", "Mexico City"),
                ("South Korea", "Seoul"),
                ("Thailand", "Bangkok"),
                ("Hungary", "Budapest"),
                ("India", "New Delhi"),
            )
        ),
    )
    + _kind(
        "geography",
        ("In which country is the Eiffel Tower?", "France"),
        ("In which country is the city of Tokyo?", "Japan"),
        ("In which country are the pyramids of Giza?", "Egypt"),
        ("In which country is the Great Wall?", "China"),
        ("What is the currency of Japan?", "Yen", "The yen"),
        ("Which continent is Brazil in?", "South America"),
        ("Which continent is Kenya in?", "Africa"),
        ("What is the tallest mountain in the world?", "Mount Everest", "Everest"),
        ("What is the longest river in Africa?", "Nile", "The Nile"),
    )
    + _kind(
        "arithmetic",
        ("What is 2 + 2?", "4"),
        ("What is 7 + 5?", "12"),
        ("What is 3 + 4?", "7"),
        ("What is 10 - 3?", "7"),
        ("What is 5 + 5?", "10"),
        ("What is 2 times 5?", "10"),
        ("What is 1 + 1?", "2"),
        ("What is 10 + 10?", "20"),
    )
    + _kind(
        "colour",
        ("What colour is the sky on a clear day?", "Blue"),
        ("What colour is grass?", "Green"),
        ("What colour is snow?", "White"),
        ("What colour is coal?", "Black"),
        ("What colour is a ripe banana?", "Yellow"),
        ("What colour is a strawberry?", "Red"),
    )
    + _kind(
        "count",
        ("How many days are in a week?", "7", "Seven"),
        ("How many months are in a year?", "12", "Twelve"),
        ("How many hours are in a day?", "24"),
        ("How many minutes are in an hour?", "60"),
        ("How many legs does a spider have?", "8", "Eight"),
        ("How many sides does a triangle have?", "3", "Three"),
        ("How many grams are in a kilogram?", "1000", "1,000"),
        ("How many centimetres are in a metre?", "100"),
    )
    + _kind(
        "calendar",
        ("Which day comes after Monday?", "Tuesday"),
        ("Which day comes before Sunday?", "Saturday"),
        ("Which month comes after January?", "February"),
        ("What is the last month of the year?", "December"),
    )
    + _kind(
        "opposite",
        ("What is the opposite of hot?", "Cold"),
        ("What is the opposite of up?", "Down"),
        ("What is the opposite of big?", "Small", "Little"),
        ("What is the opposite of day?", "Night"),
        ("What is the opposite of yes?", "No"),
        ("What is the opposite of left?", "Right"),
    )
    + _kind(
        "science",
        ("What is the largest planet in the solar system?", "Jupiter"),
        ("Which planet do we live on?", "Earth", "The Earth"),
        ("What is the chemical symbol for gold?", "Au"),
        ("What is the chemical formula of water?", "H2O"),
        ("What gas do humans breathe in to live?", "Oxygen"),
        ("What is frozen water called?", "Ice"),
        ("What do bees make?", "Honey"),
        ("What is the hardest natural substance?", "Diamond"),
    )
    + _kind(
        "animal",
        ("Which animal says moo?", "Cow", "A cow"),
        ("Which animal barks?", "Dog", "A dog"),
        ("What is a baby cat called?", "Kitten", "A kitten"),
        ("What is a baby dog called?", "Puppy", "A puppy"),
    )
    + _kind(
        "language",
        ("What is the plural of mouse?", "Mice"),
        ("What is the plural of child?", "Children"),
        ("What is the past tense of go?", "Went"),
        ("Which language is spoken in France?", "French"),
        ("Which language is spoken in Germany?", "German"),
        ("Which letter comes after B?", "C"),
        ("What is the first letter of the English alphabet?", "A"),
    )
    + _kind(
        "person",
        ("Who wrote Romeo and Juliet?", "William Shakespeare", "Shakespeare"),
        ("Who was the first president of the United States?", "George Washington"),
        ("Who painted The Starry Night?", "Vincent van Gogh", "Van Gogh"),
    )
)


def accepts(probe: Probe, text: str) -> bool:
    """Whether a decoded answer (without the end of turn) is one of the probe's accepted forms,
    after stripping surrounding whitespace."""
    return text.strip() in (probe.answer, *probe.also)
