"""Plugin discovery through entry points, as for a third-party package."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mpinn
from mpinn import plugins
from mpinn.backend import get_backend


def test_builtin_plugins_are_registered_through_entry_points():
    backends = plugins.available(plugins.BACKENDS)
    assert backends["numpy"].value == "mpinn_numpy:NumpyBackend"
    assert {"digits", "npz", "hdf5", "mnist", "regression", "xor", "blobs"} <= set(
        plugins.available(plugins.DATASETS))
    assert get_backend("numpy").name == "numpy"


def test_unknown_plugin_error_lists_installed_names():
    with pytest.raises(mpinn.PluginError, match=r"no mpinn.backends plugin named 'nope'; "
                                                 r"installed: .*numpy"):
        plugins.load(plugins.BACKENDS, "nope")
    with pytest.raises(mpinn.PluginError, match="unknown plugin group"):
        plugins.available("mpinn.layers")


def install(site: Path, distribution: str, entry_points: str, module: str = "",
            code: str = "") -> None:
    """Lay a package out in `site` the way pip does: a module plus a .dist-info folder
    whose entry_points.txt registers the plugins."""
    if module:
        (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def installed_throwaway_package(tmp_path, monkeypatch):
    """A backend and a dataset plugin from an installed third-party package."""
    install(tmp_path, "throwaway-plugin",
            "[mpinn.backends]\nloud = throwaway_plugin:LoudBackend\n\n"
            "[mpinn.datasets]\nramp = throwaway_plugin:ramp\n",
            "throwaway_plugin", """
        import numpy as np
        from mpinn_numpy import NumpyBackend
        from mpinn.data import Dataset

        class LoudBackend(NumpyBackend):
            name = "loud"

        def ramp(samples=6):
            x = np.arange(samples, dtype=np.float32).reshape(-1, 1)
            return Dataset(x, 2 * x)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("throwaway_plugin", None)


def test_installed_third_party_plugins_are_discovered_and_usable(installed_throwaway_package):
    assert "loud" in plugins.available(plugins.BACKENDS)
    assert plugins.available(plugins.BACKENDS)["loud"].dist.name == "throwaway-plugin"
    x, y = plugins.load(plugins.DATASETS, "ramp")(samples=4)
    model = mpinn.Sequential([mpinn.Dense(1, input_shape=(1,))], seed=0, backend="loud")
    assert model.backend.name == "loud"
    model.compile("sgd", "mse")
    model.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(model.get_weights()[0]).all()


def test_a_plugin_that_is_not_a_backend_is_refused(tmp_path, monkeypatch):
    install(tmp_path, "not-a-backend", "[mpinn.backends]\nimpostor = not_a_backend:Impostor\n",
            "not_a_backend", "class Impostor:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(mpinn.PluginError, match="'impostor' gave Impostor, not an mpinn.Backend"):
        get_backend("impostor")


def test_a_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch):
    install(tmp_path, "broken", "[mpinn.backends]\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(mpinn.PluginError, match="'broken' .*no_such_module.* failed to import"):
        plugins.load(plugins.BACKENDS, "broken")
