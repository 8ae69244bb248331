"""q4asr.utils.update_marked: the one way generated sections are written into a file."""

from q4asr.utils import update_marked

MARK = ("<!-- x:begin -->", "<!-- x:end -->")


def _section(body: str) -> str:
    return f"{MARK[0]}\n{body}\n{MARK[1]}\n"


def test_update_marked_appends_replaces_and_keeps_the_rest(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    update_marked(path, _section("one"), MARK)  # a new file: the section alone
    assert path.read_text() == _section("one")
    path.write_text("# Title\n\ntext\n" + _section("one") + "\nafter\n")
    update_marked(path, _section("two\nlines"), MARK)
    assert (
        path.read_text() == "# Title\n\ntext\n" + _section("two\nlines") + "\nafter\n"
    )
    other = tmp_path / "other.md"
    other.write_text("# Other\n\n")
    update_marked(other, _section("new"), MARK)
    assert other.read_text() == "# Other\n\n" + _section("new")
