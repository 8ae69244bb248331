"""Sentence normalisation, vocabulary cap and determinism of the WordNet source."""

import pytest

from q4asr.corpora.text import (
    WORDNET_FILES,
    TextConfig,
    cap_vocabulary,
    load_glosses,
    load_sentences,
    normalize,
    normalize_all,
    read_wordnet_examples,
    read_wordnet_glosses,
    spell_number,
)


def test_normalize_keeps_words_and_apostrophes():
    assert normalize("He didn't go, did he?") == "HE DIDN'T GO DID HE"
    assert normalize("a well-known 'fact'.") == "A WELL KNOWN FACT"
    assert (
        normalize("she has 3 cats and 42 dogs")
        == "SHE HAS THREE CATS AND FORTY TWO DOGS"
    )


@pytest.mark.parametrize(
    "raw",
    [
        "there were 200 people",
        "Friday the 13th",
        "it was $20",
        "worked at IBM",
        "James R. Schlesinger spoke",
        "5 & 6",
        "",
        "   ",
    ],
)
def test_normalize_drops_ambiguous(raw):
    assert normalize(raw) is None


def test_spell_number_range():
    assert spell_number(0) == "zero"
    assert spell_number(70) == "seventy"
    assert spell_number(99) == "ninety nine"
    with pytest.raises(ValueError, match="100"):
        spell_number(100)


def test_cap_vocabulary_keeps_only_frequent_words():
    sents = normalize_all(
        [
            "the cat sat",
            "the cat ran",
            "the dog sat",
            "a zebra ran",
            "the cat",
            "the cat sat",
        ]
    )
    assert len(sents) == 5  # deduplicated
    kept, vocab = cap_vocabulary(sents, vocab_size=4, min_words=3, max_words=3)
    assert vocab == ["THE", "CAT", "RAN", "SAT"]
    assert kept == ["THE CAT SAT", "THE CAT RAN"]


def test_wordnet_sentences_capped_and_deterministic():
    cfg = TextConfig(vocab_size=500, min_words=3, max_words=8)
    a = load_sentences(cfg, seed=3)
    b = load_sentences(cfg, seed=3)
    c = load_sentences(cfg, seed=4)
    assert a == b and a != c and sorted(a) == sorted(c)
    assert len(a) == len(set(a)) > 100
    words = {w for s in a for w in s.split()}
    assert len(words) <= 500
    assert all(3 <= len(s.split()) <= 8 for s in a)
    assert all(w.replace("'", "").isalpha() and w.isupper() for w in words)
    bigger = load_sentences(TextConfig(vocab_size=2000, min_words=3, max_words=8), 3)
    assert set(a) < set(bigger)


def test_glosses_are_the_definitions_within_a_vocabulary(tmp_path):
    lines = [
        "  1 This software and database is being provided\n",  # licence header
        '00001 03 n 01 cat 0 000 | a small animal; a pet that purrs; "the cat sat"\n',
        '00002 03 n 01 dog 0 000 | an animal that barks; "the dog ran away"\n',
        "00003 03 n 01 sun 0 000 | the star we orbit; a pet that purrs\n",
    ]
    for name in WORDNET_FILES:
        (tmp_path / name).write_text("".join(lines) if name == "data.noun" else "")
    assert read_wordnet_glosses(tmp_path) == [
        "a small animal",
        "a pet that purrs",
        "an animal that barks",
        "the star we orbit",
        "a pet that purrs",
    ]
    vocab = set("A SMALL ANIMAL PET THAT PURRS AN BARKS THE STAR WE".split())
    got = load_glosses(vocab, {"AN ANIMAL THAT BARKS"}, 3, 4, wordnet_dir=tmp_path)
    # ORBIT is outside the vocabulary; the excluded sentence and the duplicate go
    assert sorted(got) == ["A PET THAT PURRS", "A SMALL ANIMAL"]
    four = load_glosses(vocab, set(), min_words=4, wordnet_dir=tmp_path)
    assert sorted(four) == ["A PET THAT PURRS", "AN ANIMAL THAT BARKS"]
    assert four == load_glosses(vocab, set(), min_words=4, wordnet_dir=tmp_path)


def test_missing_wordnet_is_a_clear_error(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="install wordnet-base: tools/install.sh"
    ):
        read_wordnet_examples(tmp_path)
    with pytest.raises(FileNotFoundError, match="data.noun: WordNet data not found"):
        read_wordnet_glosses(tmp_path)


def test_text_config_validation():
    with pytest.raises(ValueError, match="max_words"):
        TextConfig(vocab_size=100, min_words=5, max_words=2)
    with pytest.raises(ValueError, match="vocab_size"):
        TextConfig(vocab_size=0)
