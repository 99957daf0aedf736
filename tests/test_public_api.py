"""The public API loads on first use: ``import mechdiff`` is light, and every public name and
subpackage is there when asked for."""

from __future__ import annotations

import pytest
from support import run_python

import mechdiff


def test_import_is_light_and_names_load_on_use() -> None:
    code = ("import sys, mechdiff\n"
            "assert 'torch' not in sys.modules and 'transformer_lens' not in sys.modules\n"
            "assert mechdiff.Task.__name__ == 'Task'\n"
            "assert mechdiff.circuits.edge_attribution.__name__ == 'edge_attribution'\n"
            "from mechdiff import load_pair, cross_patch, errors\n")
    run_python(code)


def test_every_public_name_resolves_and_unknown_names_do_not() -> None:
    for name in mechdiff.__all__:
        assert getattr(mechdiff, name) is not None, name
        assert name in dir(mechdiff)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = mechdiff.not_a_name
