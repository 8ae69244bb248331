"""q4asr.recipe: the systems file and its command-line queries."""

import pytest

from q4asr.recipe import load_systems, main


def write(tmp_path, text):
    (tmp_path / "train.yaml").write_text("model: {}\n")
    (tmp_path / "w4.yaml").write_text("default: {weight_bits: 4}\n")
    p = tmp_path / "systems.yaml"
    p.write_text(text)
    return p


GOOD = """systems:
  - {name: float32, method: float, config: CFG}
  - {name: ptq_w4, method: ptq, plan: PLAN, init_from: float32}
  - {name: qat_w4, method: qat, config: CFG, plan: PLAN, init_from: float32}
  - {name: float32_ft, method: float, config: CFG, init_from: float32}
"""


def good(tmp_path):
    return write(tmp_path, GOOD.replace("CFG", str(tmp_path / "train.yaml"))
                 .replace("PLAN", str(tmp_path / "w4.yaml")))


def test_load_and_query(tmp_path, capsys):
    p = good(tmp_path)
    assert [s.name for s in load_systems(p)] == ["float32", "ptq_w4", "qat_w4", "float32_ft"]
    assert main([str(p), "list", "--method", "float,qat"]) == 0
    assert capsys.readouterr().out.split() == ["float32", "qat_w4", "float32_ft"]
    assert main([str(p), "get", "ptq_w4", "init_from"]) == 0
    assert capsys.readouterr().out == "float32\n"
    assert main([str(p), "get", "float32", "plan"]) == 0
    assert capsys.readouterr().out == "\n"
    assert main([str(p), "get", "nope", "plan"]) == 1
    assert "no system nope" in capsys.readouterr().err


@pytest.mark.parametrize("entry, message", [
    ("{name: a, method: int8, config: CFG}", "is not one of"),
    ("{name: a, method: float}", "needs a training config"),
    ("{name: a, method: qat, config: CFG}", "needs a plan"),
    ("{name: a, method: ptq, plan: PLAN}", "ptq needs init_from"),
    ("{name: a, method: float, config: CFG, plan: PLAN}", "a float system has no plan"),
    ("{name: a, method: float, config: CFG, colour: red}", "unknown keys ['colour']"),
    ("{name: a b, method: float, config: CFG}", "use letters"),
    ("{name: a, method: qat, config: CFG, plan: PLAN, init_from: later}", "not a system listed before"),
    ("{name: a, method: float, config: /no/such.yaml}", "no such file"),
])
def test_errors_name_the_problem(tmp_path, entry, message):
    text = ("systems:\n  - " + entry + "\n").replace("CFG", str(tmp_path / "train.yaml")) \
        .replace("PLAN", str(tmp_path / "w4.yaml"))
    with pytest.raises(ValueError, match="systems.yaml") as e:
        load_systems(write(tmp_path, text))
    assert message in str(e.value)


def test_init_from_must_be_float(tmp_path):
    text = GOOD + "  - {name: qat_b, method: qat, config: CFG, plan: PLAN, init_from: qat_w4}\n"
    p = write(tmp_path, text.replace("CFG", str(tmp_path / "train.yaml"))
              .replace("PLAN", str(tmp_path / "w4.yaml")))
    with pytest.raises(ValueError, match="must be a float system"):
        load_systems(p)
