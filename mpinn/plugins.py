"""Plugin discovery over entry points.

Backends, strategies and datasets are found through the entry-point groups below; the
built-in ones register themselves exactly as a third-party package would, in the
`[options.entry_points]` section of its packaging metadata.
"""

from importlib.metadata import EntryPoint, entry_points

from .errors import PluginError

BACKENDS = "mpinn.backends"
STRATEGIES = "mpinn.strategies"
DATASETS = "mpinn.datasets"
GROUPS = (BACKENDS, STRATEGIES, DATASETS)


def available(group: str) -> dict[str, EntryPoint]:
    """Installed plugins of `group`, by name."""
    if group not in GROUPS:
        raise PluginError(f"unknown plugin group {group!r}; groups: {', '.join(GROUPS)}")
    return {ep.name: ep for ep in entry_points(group=group)}


def load(group: str, name: str):
    """The object registered as `name` in `group`; the error lists what is installed."""
    found = available(group)
    if name not in found:
        installed = ", ".join(sorted(found)) or "none"
        raise PluginError(f"no {group} plugin named {name!r}; installed: {installed}")
    try:
        return found[name].load()
    except ImportError as exc:
        raise PluginError(
            f"{group} plugin {name!r} ({found[name].value}) failed to import: {exc}"
        ) from exc
