"""Fixtures shared by the unit tests."""

import pytest

from mpinn.backend import installed_backends


@pytest.fixture(params=sorted(installed_backends()))
def backend(request) -> str:
    """The name of each installed backend in turn; one that cannot run here skips."""
    reason = installed_backends()[request.param]
    if reason:
        pytest.skip(f"backend {request.param!r} cannot run here: {reason}")
    return request.param
