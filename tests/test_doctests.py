"""The examples in hsrm's docstrings run and give what they show (worked layouts, collators, the record)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import hsrm

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(hsrm.__path__, "hsrm."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failed == 0
