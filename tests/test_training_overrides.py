"""The override engine follows the dataclasses it is given: sections, lists and mappings of items, free mappings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from seeyou_ml.training.overrides import apply_overrides, build_config


@dataclass
class Term:
    weight: float = 1.0


@dataclass
class Section:
    size: int = 2
    options: dict = field(default_factory=dict)
    per_split: dict = field(default_factory=dict)
    name: Optional[str] = None


@dataclass
class Root:
    section: Section = field(default_factory=Section)
    terms: dict = field(default_factory=lambda: {"a": Term()}, metadata={"item": Term})
    steps: list = field(default_factory=lambda: [Term(), Term()], metadata={"item": Term})


def _plain(config: Root) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


def test_every_free_mapping_takes_nested_dotted_keys():
    config = apply_overrides(Root, _plain(Root()), ["--section.per_split.test.num_images", "5",
                                                    "--per_split.train.num_images", "7", "--options.x", "a"])
    assert config.section.per_split == {"test": {"num_images": 5}, "train": {"num_images": 7}}
    assert config.section.options == {"x": "a"}


def test_lists_and_mappings_of_items_are_typed():
    config = apply_overrides(Root, _plain(Root()), ["--steps.1.weight", "3", "--terms.b.weight", "0.5",
                                                    "--a.weight", "2"])
    assert config.steps == [Term(1.0), Term(3.0)]
    assert config.terms == {"a": Term(2.0), "b": Term(0.5)}
    with pytest.raises(ValueError, match=r"Override --steps.2.weight names no recipe field"):
        apply_overrides(Root, _plain(Root()), ["--steps.2.weight", "3"])
    with pytest.raises(ValueError, match=r"Recipe field terms.b.weight='x' is not a valid float"):
        apply_overrides(Root, _plain(Root()), ["--terms.b.weight", "x"])


def test_bare_names_resolve_only_when_unique():
    assert apply_overrides(Root, _plain(Root()), ["--size", "4"]).section.size == 4
    with pytest.raises(ValueError, match=r"--weight is ambiguous; write one of: --terms.a.weight, --steps.0.weight"):
        apply_overrides(Root, _plain(Root()), ["--weight", "4"])
    with pytest.raises(ValueError, match=r"--size.x names no recipe field"):
        apply_overrides(Root, _plain(Root()), ["--size.x", "4"])


def test_build_names_unknown_keys_and_the_section():
    with pytest.raises(ValueError, match=r"Unknown recipe key\(s\) in section 'section': 'sise' \(did you mean 'size'"):
        build_config(Root, {"section": {"sise": 1}})
    assert build_config(Root, None) == Root()
