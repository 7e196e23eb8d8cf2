"""The method table says which --set overrides its rows ran with (e.g. bf16 autocast), so a table run with a
switch is never read as the configs' defaults."""
from benchmarks import methods


def _row(command: str, **extra) -> dict:
    cells = ["simclr", "cnn", "1", "234", "700", "1.4", "88.00", "90.00", "–", "–", "–", "–", "50.0"]
    return {"cells": cells, "command": command, "commit": "abc1234", "machine": {}, **extra}


def test_overrides_are_read_from_the_record_or_else_from_the_command():
    assert methods.row_overrides(_row("python -m benchmarks.methods --epochs 1")) == []
    assert methods.row_overrides(_row("python -m benchmarks.methods --epochs 1 --set train.amp=auto a=1 --methods x")) \
        == ["train.amp=auto", "a=1"]
    assert methods.row_overrides(_row("python -m benchmarks.methods --set b=2", overrides=["train.amp=auto"])) \
        == ["train.amp=auto"]


def test_the_table_names_shared_overrides_and_warns_on_mixed_ones():
    plain = _row("python -m benchmarks.methods --epochs 1")
    bf16 = _row("python -m benchmarks.methods --epochs 1 --set train.amp=auto", overrides=["train.amp=auto"])
    assert methods.overrides_sentence([plain, plain]) == ""
    assert "`--set train.amp=auto`" in methods.overrides_sentence([bf16, bf16])
    mixed = methods.overrides_sentence([plain, bf16])
    assert "2 different sets of overrides" in mixed and "none" in mixed and "`train.amp=auto`" in mixed
    lines = methods.table_lines({"rows": {"simclr": bf16}, "raw": None}, "## t", methods.HEADER, [])
    assert any("`--set train.amp=auto`" in line for line in lines)
