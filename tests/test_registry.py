"""hvi.registry.Registry: the one name registry behind sources, likelihoods, priors and models."""

from __future__ import annotations

import pytest

from hvi.data.base import SOURCES
from hvi.likelihoods import LIKELIHOODS
from hvi.models.registry import MODELS
from hvi.priors.base import PRIORS
from hvi.registry import Registry


def test_register_build_and_list():
    reg: Registry[tuple] = Registry("widget")

    @reg.register("pair")
    def pair(a: int = 1, b: int = 2) -> tuple:
        """Two numbers.

        More text."""
        return (a, b)

    assert reg.build("pair", b=5) == (1, 5) and reg.names() == ["pair"] and "pair" in reg
    assert reg.describe("pair") == "Two numbers."
    assert reg.accepted_keys("pair") == (["a", "b"], False)
    with pytest.raises(ValueError, match=r"^widget 'pair' is already registered; pick another name\.$"):
        reg.register("pair")(pair)
    with pytest.raises(ValueError, match=r"^unknown widget 'pear'; registered widgets: pair\.$"):
        reg.build("pear")
    with pytest.raises(ValueError, match=r"unknown config key 'c' for widget 'pair'; accepted keys: a, b\."):
        reg.check_keys("pair", {"c": 1})
    with pytest.raises(TypeError, match="widget name must be a str"):
        reg.register(3)
    reg.unregister("pair")
    assert reg.names() == []


def test_the_four_kinds_share_it():
    assert {"solar", "sinusoid"} <= set(SOURCES.names())
    assert LIKELIHOODS.names() == ["categorical", "gaussian"]
    assert "gaussian" in PRIORS and "bayes_unet" in MODELS
    with pytest.raises(ValueError, match="unknown task source 'nope'; registered sources: "):
        SOURCES.builder("nope")
