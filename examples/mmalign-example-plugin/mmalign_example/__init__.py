"""An example third-party mmalign plugin.

It provides

* the loss ``exponential``: the exponential loss of the GPO family (Tang et al. 2024,
  "Generalized Preference Optimization: A Unified Approach to Offline Alignment"), and
* the dataset format ``tsv``: tab-separated files with a header line naming the columns
  ``prompt``, ``chosen`` and ``rejected``.

mmalign finds it through the entry point ``example = "mmalign_example"`` in the ``mmalign`` group
(see this package's pyproject.toml); nothing has to be imported or configured by the user.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from mmalign import DataError, hookimpl
from mmalign.data import Record
from mmalign.losses import LossSpec, log_ratio_difference

__version__ = "0.1.0"


# --------------------------------------------------------------------------------------- loss


def exponential(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """Exponential loss of the GPO family (Tang et al. 2024, Table 1, f(x) = exp(-x)):

        L = exp(-beta * h),   h = (pc - rc) - (pr - rr)

    with pc, pr the policy's scores of the chosen and rejected responses and rc, rr the
    reference's. It is the AdaBoost-style convex surrogate of the 0-1 loss on beta * h: like DPO
    it pushes h up, but it keeps a larger gradient on pairs the policy already gets wrong
    (dL/dh = -beta * L grows without bound as h -> -inf, where DPO's saturates at -beta).
    At initialisation (policy == reference) h = 0 and L = 1.

    Shapes: all inputs [B]; returns [B].
    """
    return torch.exp(-beta * log_ratio_difference(pc, pr, rc, rr))


EXPONENTIAL = LossSpec(
    name="exponential",
    fn=exponential,
    needs_reference=True,
    responses="pair",
    summary="GPO exponential loss (Tang et al. 2024): exp(-beta * h)",
)


@hookimpl
def mmalign_register_losses(register):
    register(EXPONENTIAL)


# ------------------------------------------------------------------------------------ dataset

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def _unescape(field: str) -> str:
    r"""``\t``, ``\n``, ``\r`` and ``\\`` inside a field stand for tab, newline, CR, backslash;
    any other backslash is kept as it is."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field) and field[i + 1] in _ESCAPES:
            out.append(_ESCAPES[field[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def read_tsv(path: str | Path) -> list[Record]:
    r"""Read a tab-separated file into records.

    The first non-blank line is the header; it must name the columns ``prompt``, ``chosen`` and
    ``rejected`` (in any order; further columns are kept as extra record fields). Every other
    non-blank line is one record with exactly as many tab-separated fields as the header. Fields
    are plain text; write a tab, newline or backslash inside one as ``\t``, ``\n`` or ``\\``.
    Bad input raises :class:`mmalign.errors.DataError` naming ``file:line``.
    """
    path = Path(path)
    records: list[Record] = []
    header: list[str] | None = None
    header_line = 0
    # utf-8-sig drops a byte-order mark that spreadsheet exports put before the header.
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if header is None:
                header, header_line = [c.strip() for c in fields], number
                missing = [c for c in REQUIRED_COLUMNS if c not in header]
                if missing:
                    raise DataError(
                        f"{path}:{number}: the header line lacks the column(s) "
                        f"{', '.join(missing)}. The first line of a .tsv file must name the "
                        f"columns, tab-separated, e.g. 'prompt<TAB>chosen<TAB>rejected'; it has: "
                        f"{', '.join(repr(c) for c in header)}."
                    )
                duplicated = sorted({c for c in header if header.count(c) > 1})
                if duplicated:
                    raise DataError(f"{path}:{number}: the header names the column(s) "
                                    f"{', '.join(duplicated)} more than once; name each column once.")
                continue
            if len(fields) != len(header):
                raise DataError(
                    f"{path}:{number}: expected {len(header)} tab-separated fields (as in the header "
                    f"on line {header_line}: {', '.join(header)}), got {len(fields)}. Write a tab "
                    f"inside a field as \\t, or fix the row."
                )
            row = {name: _unescape(value) for name, value in zip(header, fields)}
            records.append(Record(row, f"{path}:{number}", path.parent))
    if header is None:
        raise DataError(f"{path}:1: the file is empty; a .tsv data file needs a header line "
                        f"naming the columns prompt, chosen and rejected, then one record per line.")
    return records


@hookimpl
def mmalign_register_datasets(register):
    register("tsv", read_tsv, suffixes=(".tsv",))
