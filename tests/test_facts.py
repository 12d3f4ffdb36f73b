"""Synthetic facts and their retriever: deterministic, bilingual, held-out paraphrases, recall@k."""

import pytest

from continual.data.facts import (
    ATTRIBUTES,
    Fact,
    fact_text,
    make_facts,
    render,
    renderings,
)
from continual.retrieval import Retriever, recall_at_k


def _questions(bank, kind):
    """Every question of `kind` for every fact, with the index of its fact in the store."""
    pairs = [(q, i) for i, fact in enumerate(bank.facts) for q, _ in renderings(fact, kind)]
    return [q for q, _ in pairs], [i for _, i in pairs]


def test_facts_are_deterministic_under_a_seed_and_split_into_equal_sets():
    bank = make_facts(12, 3, seed=5)
    assert bank == make_facts(12, 3, seed=5)
    assert bank.facts != make_facts(12, 3, seed=6).facts
    assert [len(s) for s in bank.sets] == [4 * 4 * 2] * 3
    ids_per_set = [{f.entity_id for f in s} for s in bank.sets]
    assert all(len(ids) == 4 for ids in ids_per_set)
    assert not set.intersection(*ids_per_set)
    assert len(bank.sentences()) == len(bank.facts) == 96


def test_entities_and_founders_have_distinct_invented_names():
    bank = make_facts(200, 4, seed=0)
    for language in ("en", "zh"):
        names = {f.entity_id: f.entity for f in bank.facts if f.language == language}
        assert len(names) == 200 and len(set(names.values())) == 200
        founders = [
            f.value for f in bank.facts if f.language == language and f.attribute == "founder"
        ]
        assert len(set(founders)) == 200
        assert not set(founders) & set(names.values())
    english = [f.entity for f in bank.facts if f.language == "en"]
    assert all(name.isascii() and name[0].isupper() for name in english)
    chinese = [f.entity for f in bank.facts if f.language == "zh"]
    assert all(not any(c.isascii() for c in name) for name in chinese)


def test_every_fact_renders_in_both_languages_with_distinct_train_and_heldout_templates():
    bank = make_facts(8, 2, seed=1)
    assert {(f.entity_id, f.language) for f in bank.facts} == {
        (i, lang) for i in range(8) for lang in ("en", "zh")
    }
    for fact in bank.facts:
        train, heldout = renderings(fact, "train"), renderings(fact, "heldout")
        assert len(train) >= 3 and len(heldout) >= 2
        questions = [q for q, _ in train + heldout]
        assert len(set(questions)) == len(questions)
        assert all(fact.entity in q for q in questions)
        assert {a for _, a in train + heldout} == {render(fact)[1]}
        assert fact.value.lower() in render(fact)[1].lower()
        assert fact.value.lower() in fact_text(fact).lower()


def test_heldout_templates_never_appear_in_training_renderings():
    bank = make_facts(20, 4, seed=2)
    train = {q for fact in bank.facts for q, _ in renderings(fact, "train")}
    heldout = {q for fact in bank.facts for q, _ in renderings(fact, "heldout")}
    assert heldout and not heldout & train


def test_the_articles_demo_fact_renders_as_in_the_article():
    bank = make_facts(4, 2, include_demo=True)
    place = {f.language: f for f in bank.sets[0] if f.attribute == "place" and f.entity_id == 0}
    assert render(place["zh"]) == ("故宫在哪里?", "在北京")
    assert render(place["en"]) == ("Where is the Forbidden City?", "In Beijing.")
    assert fact_text(place["en"]).startswith("The Forbidden City is located in ")
    assert fact_text(place["zh"]) == "故宫位于北京市。"
    assert "故宫" not in {f.entity for f in make_facts(4, 2).facts}


def test_english_only_bank():
    bank = make_facts(3, 1, languages=("en",))
    assert {f.language for f in bank.facts} == {"en"} and len(bank.facts) == 3 * len(ATTRIBUTES)


def test_retrieval_finds_the_right_fact_for_most_questions():
    # Measured on this bank (seeds 0-3): recall@1 0.94-0.95 for training templates and
    # 0.88-0.90 for held-out paraphrases, recall@3 >= 0.997. Misses are the entity's other
    # attributes; a retriever that only matched the entity would score about 0.25 at k=1.
    bank = make_facts(24, 4, seed=0, include_demo=True)
    retriever = Retriever(bank.sentences())
    train_q, train_gold = _questions(bank, "train")
    heldout_q, heldout_gold = _questions(bank, "heldout")
    assert recall_at_k(retriever, train_q, train_gold, 1) >= 0.9
    assert recall_at_k(retriever, heldout_q, heldout_gold, 1) >= 0.83
    assert recall_at_k(retriever, train_q + heldout_q, train_gold + heldout_gold, 3) >= 0.98
    demo = next(
        i for i, f in enumerate(bank.facts) if f.entity == "故宫" and f.attribute == "place"
    )
    assert retriever.top_k("故宫在哪里?", 1) == [demo]
    assert len(retriever.top_k("Where is the Forbidden City?", 500)) == len(bank.facts)


def test_recall_is_low_for_a_store_in_the_wrong_order():
    bank = make_facts(8, 2, seed=0)
    questions, gold = _questions(bank, "train")
    shuffled = Retriever(bank.sentences()[::-1])
    assert recall_at_k(shuffled, questions, gold, 1) < 0.1


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="fact store would be empty"):
        make_facts(0, 1)
    with pytest.raises(ValueError, match="must divide"):
        make_facts(10, 3)
    with pytest.raises(ValueError, match="num_sets must be in"):
        make_facts(4, 5)
    with pytest.raises(ValueError, match="num_sets must be in"):
        make_facts(4, 0)
    with pytest.raises(ValueError, match="unknown template language 'fr'"):
        make_facts(4, 1, languages=("en", "fr"))
    with pytest.raises(ValueError, match="distinct"):
        make_facts(4, 1, languages=("en", "en"))
    with pytest.raises(ValueError, match="unknown template language 'de'"):
        render(Fact("Der Turm", "place", "Berlin", "de", 0))
    fact = make_facts(1, 1).facts[0]
    with pytest.raises(ValueError, match="unknown attribute"):
        render(fact._replace(attribute="height"))
    with pytest.raises(ValueError, match="template_kind"):
        renderings(fact, "test")
    with pytest.raises(ValueError, match="index must be in"):
        render(fact, "heldout", 9)
    with pytest.raises(ValueError, match="store is empty"):
        Retriever([])
    retriever = Retriever(["a b", "c d"])
    with pytest.raises(ValueError, match="k must be"):
        retriever.top_k("a", 0)
    with pytest.raises(ValueError, match="gold indices"):
        recall_at_k(retriever, ["a"], [2], 1)
    with pytest.raises(ValueError, match="1 questions but 2"):
        recall_at_k(retriever, ["a"], [0, 1], 1)
