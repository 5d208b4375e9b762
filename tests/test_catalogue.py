"""The README's catalogue table (issue 32: every item of the notes with what implements it and a recipe):
every registered method and transform is named in it, every recipe it points to exists and loads, and every
kdkit command it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- catalogue:start -->")[1].split("<!-- catalogue:end -->")[0]
    lines = [x for x in table.strip().splitlines() if x.startswith("| ") and not x.startswith("| family")]
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines]


def test_every_method_and_transform_is_in_the_catalogue():
    from kdkit import config  # noqa: F401  (registers every transform, as `kdkit list transforms` does)
    from kdkit.methods import METHODS
    from kdkit.transforms import TRANSFORMS

    def own(registry) -> set[str]:  # kdkit's own entries (other tests register some of theirs in this process)
        return {n for n in registry.names() if registry.get(n).__module__.startswith("kdkit.")}

    named = {n for r in rows() for n in re.findall(r"`([a-z0-9_]+)`", r[2])}
    assert len(own(METHODS)) >= 40 and own(METHODS) - named == set()
    assert {"binarize", "weight_share"} <= own(TRANSFORMS) and own(TRANSFORMS) - named == set()
    assert len(rows()) >= 60


def test_every_recipe_in_the_catalogue_exists_and_loads(monkeypatch):
    from kdkit.config import load_config
    from kdkit.pipeline import load_pipeline
    from kdkit.specialists import load_specialists_config

    monkeypatch.chdir(ROOT)
    paths = {p for r in rows() for p in re.findall(r"configs/[\w/]+\.yaml", r[3])}
    assert len(paths) >= 50
    for p in sorted(paths):
        assert (ROOT / p).is_file(), p
        if "/pipelines/" in p:
            load_pipeline(ROOT / p)
        elif "/specialists/" in p:
            load_specialists_config(ROOT / p)
        else:
            load_config(p)


def test_every_command_in_the_catalogue_exists():
    from kdkit.cli.parser import build_parser

    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    commands = {c for r in rows() for c in re.findall(r"kdkit ([a-z]+)", r[2] + " " + r[3])}
    assert {"condense", "synthesize", "lifelong", "pipeline", "specialists", "quantize", "export"} <= commands
    assert commands - set(choices) == set()
