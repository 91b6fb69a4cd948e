"""The one table from the names that configs use to gradient methods, read by
the configs, `alignment_methods`, the experiments and the tests."""

from ._base import AbstractGradient, Autodiff
from ._bptt import BPTT
from ._deer import DEER
from ._elk import ELK
from ._eprop import EProp
from ._implicit import Implicit
from ._kf_rtrl import KFRTRL
from ._layer_local import LayerLocalRTRL
from ._online import AbstractOnlineGradient
from ._rflo import RFLO
from ._rtrl import RTRL
from ._snap import SnAp
from ._uoro import UORO

GRADIENTS: dict[str, type[AbstractGradient]] = {
    "autodiff": Autodiff,
    "bptt": BPTT,
    "rtrl": RTRL,
    "implicit": Implicit,
    "deer": DEER,
    "elk": ELK,
    "snap": SnAp,
    "uoro": UORO,
    "kf_rtrl": KFRTRL,
    "rflo": RFLO,
    "eprop": EProp,
    "layer_local": LayerLocalRTRL,
}
"""Config name (`gradient.name`) → method class; the `gradient:` section's other
keys are the class's keyword arguments."""

ONLINE_GRADIENTS: tuple[str, ...] = tuple(
    name for name, cls in GRADIENTS.items() if issubclass(cls, AbstractOnlineGradient)
)
"""The config names of the methods with an online `init` / `step` / `reset`."""

GRADIENT_VARIANTS: dict[str, tuple[str, dict]] = {
    "RTRL": ("rtrl", {}),
    "BPTT": ("bptt", {}),
    "BPTT(truncate=1)": ("bptt", {"truncate": 1}),
    "BPTT(truncate=10)": ("bptt", {"truncate": 10}),
    "SnAp-1": ("snap", {"order": 1}),
    "SnAp-2": ("snap", {"order": 2}),
    "UORO": ("uoro", {}),
    "KF-RTRL": ("kf_rtrl", {}),
    "RFLO": ("rflo", {}),
    "RFLO(random)": ("rflo", {"feedback": "random"}),
    "e-prop": ("eprop", {}),
}
"""The methods compared in studies and tables, by display name: `(config name,
options)`."""


def make_gradient(name: str, **options) -> AbstractGradient:
    """The method of a config name or a display name of `GRADIENT_VARIANTS`
    (`"snap"` or `"SnAp-2"`), with `options` added to the variant's.

    **Raises:** `ValueError` naming the known names.
    """
    if name in GRADIENT_VARIANTS:
        name, base = GRADIENT_VARIANTS[name]
        options = {**base, **options}
    if name not in GRADIENTS:
        known = ", ".join([*GRADIENTS, *GRADIENT_VARIANTS])
        raise ValueError(f"unknown gradient method {name!r}; choose one of {known}")
    return GRADIENTS[name](**options)
