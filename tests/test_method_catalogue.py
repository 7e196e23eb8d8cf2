"""The method catalogue (selfsup/method_catalogue.json, what ``selfsup methods`` prints without importing torch) is
what the registry gives now: a method added, or a default, recipe or description changed, without regenerating the
file fails here, naming the command that regenerates it."""
from pathlib import Path

import pytest

from selfsup.errors import SelfsupError
from selfsup.method_catalogue import CATALOGUE, REGENERATE, read_catalogue
from selfsup.methods import DESCRIPTIONS, METHODS
from selfsup.methods import catalogue


def test_the_committed_catalogue_is_current():
    assert CATALOGUE.is_file(), f"{CATALOGUE} is missing: run {REGENERATE}"
    assert CATALOGUE.read_text(encoding="utf-8") == catalogue.render(), \
        f"{CATALOGUE} is stale (the method registry changed): run {REGENERATE}"


def test_the_reader_gives_every_method_in_registry_order_with_its_defaults():
    entries = read_catalogue()
    assert [m.name for m in entries] == list(METHODS)
    for m in entries:
        cls = METHODS[m.name]
        assert (m.recipe, m.description) == (cls.recipe, DESCRIPTIONS[m.name])
        assert cls.Params(**m.params) == cls.Params()  # the JSON defaults validate back to the defaults


def test_check_flag_exits_1_on_a_stale_file_and_write_fixes_it(tmp_path, capsys):
    out = tmp_path / "method_catalogue.json"
    assert catalogue.main(["--check", "--out", str(out)]) == 1  # missing
    assert catalogue.write_catalogue(out) == out and catalogue.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace('"proj_dim": 128', '"proj_dim": 64', 1))
    assert catalogue.main(["--check", "--out", str(out)]) == 1
    assert REGENERATE in capsys.readouterr().err


def test_an_unreadable_catalogue_names_the_regenerate_command(tmp_path):
    with pytest.raises(SelfsupError, match="selfsup.methods.catalogue"):
        read_catalogue(tmp_path / "missing.json")


def test_the_catalogue_ships_as_package_data():
    """Not a .py file, so an install (not editable) carries it only when pyproject.toml names it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert CATALOGUE.name in meta["tool"]["setuptools"]["package-data"]["selfsup"]
    assert CATALOGUE.parent.name == "selfsup"
