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
    summary = write_results(tmp_path, "test", "greedy_search", ["u2", "u1"],
                            ["HELLO WORLD", "GOOD DAY"], ["HELLO WORD", "GOOD DAY"],
                            extra={"rtf": 0.1})
    assert summary["wer"] == 25.0 and summary["rtf"] == 0.1
    assert json.loads((tmp_path / "test-greedy_search.json").read_text()) == summary
    recogs = (tmp_path / "recogs-test-greedy_search.txt").read_text().splitlines()
    assert recogs[0].startswith("u1:") and "hyp=['GOOD', 'DAY']" in recogs[1]
    errs = (tmp_path / "errs-test-greedy_search.txt").read_text()
    assert "u2:\tHELLO (WORLD->WORD)" in errs
    assert (tmp_path / "wer-summary-test-greedy_search.txt").read_text().endswith("25.00\n")
