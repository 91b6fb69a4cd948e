"""Which cells each online method covers: the one list that the methods'
checks, the docs' coverage table and the tests read."""

from .._cells import GRU, LSTM, ElmanRNN
from .._dynamics import CTRNN
from .._lru import LRU
from .._stack import Stack

ANY = "any"
"""Any step: every dynamics and integrator (and any parameters of the step)."""

ONLINE_COVERAGE: dict[str, str | tuple[type, ...]] = {
    "RTRL": ANY,
    "SnAp": (ElmanRNN, CTRNN, LSTM, GRU),
    "UORO": ANY,
    "KFRTRL": (ElmanRNN, CTRNN),
    "RFLO": (ElmanRNN, CTRNN),
    "EProp": (ElmanRNN, CTRNN, LSTM, GRU),
    "LayerLocalRTRL": (LRU, Stack),
}
"""Method class name → the cells it covers (`CTRNN`: stepped by `Euler`;
`Stack`: of `LRU` layers), or `ANY`."""

EXACT: dict[str, str] = {
    "RTRL": "exact on every step",
    "SnAp": "exact when `J` is diagonal (order 1) or the network dense (order 2)",
    "UORO": "unbiased (rank one)",
    "KFRTRL": "unbiased (Kronecker rank one)",
    "RFLO": "exact without recurrent weights",
    "EProp": "exact without recurrent weights",
    "LayerLocalRTRL": "exact for one LRU; layer-local in a stack",
}
"""Method class name → what theory says of its gradient."""


def coverage_table() -> str:
    """The coverage as a Markdown table (method, cells, what it computes)."""
    rows = ["| method | cells | gradient |", "|---|---|---|"]
    for name, cells in ONLINE_COVERAGE.items():
        if cells == ANY:
            what = "any step (every cell and integrator)"
        else:
            what = ", ".join(
                f"`{c.__name__}`"
                + (" (Euler)" if c is CTRNN else " (of LRUs)" if c is Stack else "")
                for c in cells
            )
        rows.append(f"| `{name}` | {what} | {EXACT[name]} |")
    return "\n".join(rows)
