import json

from q4asr.decode.scoring import score, write_results


def test_score_counts_and_alignment():
    s, al = score(["A B C D", "X Y"], ["A C D E", "X Z"])
    assert (s.substitutions, s.deletions, s.insertions) == (1, 1, 1)
    assert s.words == 6 and s.errors == 3 and s.utts == 2
    assert s.wer == 50.0
    assert al[0] == ["A", "(B->*)", "C", "D", "(*->E)"]
    assert al[1] == ["X", "(Y->Z)"]


def test_empty_hypothesis_and_empty_reference():
    s, al = score(["A B", ""], ["", "C"])
    assert s.deletions == 2 and s.insertions == 1 and s.words == 2
    assert s.wer == 150.0
    assert al[1] == ["(*->C)"]


def test_write_results_files(tmp_path):
    summary = write_results(
        tmp_path,
        "test",
        "greedy_search",
        ["u2", "u1"],
        ["HELLO WORLD", "GOOD DAY"],
        ["HELLO WORD", "GOOD DAY"],
        extra={"rtf": 0.1},
    )
    assert summary["wer"] == 25.0 and summary["rtf"] == 0.1
    assert json.loads((tmp_path / "test-greedy_search.json").read_text()) == summary
    recogs = (tmp_path / "recogs-test-greedy_search.txt").read_text().splitlines()
    assert recogs[0].startswith("u1:") and "hyp=['GOOD', 'DAY']" in recogs[1]
    errs = (tmp_path / "errs-test-greedy_search.txt").read_text()
    assert "u2:\tHELLO (WORLD->WORD)" in errs
    assert (
        (tmp_path / "wer-summary-test-greedy_search.txt")
        .read_text()
        .endswith("25.00\n")
    )


def test_normalize_text_matches_recipe_transcripts():
    from q4asr.decode.scoring import normalize_text

    assert normalize_text("Don't stop -- 'rock-n-roll'!") == "DON'T STOP ROCK N ROLL"
    assert normalize_text("  hello,   world. ") == "HELLO WORLD"
    assert normalize_text("") == ""


def test_lower_case_reference_scores_after_normalisation_not_verbatim():
    refs, hyps = ["hello world, good day."], ["HELLO WORLD GOOD DAY"]
    s, _ = score(refs, hyps)
    assert s.wer == 0.0 and s.words == 4
    v, _ = score(refs, hyps, "verbatim")
    assert v.wer == 100.0 and v.substitutions == 4


def test_per_utterance_errors_add_up(tmp_path):
    refs = ["A B C D", "X Y", ""]
    hyps = ["A C D E", "X Z", "Q R"]
    s, _ = score(refs, hyps)
    assert s.utt_errors == [2, 1, 2] and s.utt_words == [4, 2, 0]
    summary = write_results(tmp_path, "t", "greedy_search", ["a", "b", "c"], refs, hyps)
    assert summary["per_utt"] == {"a": [2, 4], "b": [1, 2], "c": [2, 0]}
    assert summary["scoring"] == "normalized"
