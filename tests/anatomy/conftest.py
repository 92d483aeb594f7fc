"""Shared fixtures of the anatomy tests: the real chest CT, loaded once."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_ct():
    from xrecon.anatomy.ct_io import load_default_ct

    return load_default_ct()
