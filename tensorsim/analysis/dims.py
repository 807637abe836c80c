"""The swept dimensions of a run set: which keys a grid's cells were swept over (k, p, noise, graph, ...),
each cell's values of them, their order on an axis, and which two the phase diagrams draw.

A cell's swept values are a CellKey: (("k", 5), ("p", 0.5), ("noise", 0.1)), the keys in the run set's
order (k, p first, then the others as first seen). Numbers sort ascending; labels (schedules such as
"step0:25,40:5", Beta labels, graph names) keep the order they were first seen in, after the numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import UserError, is_num

BASE_KEYS = ("k", "p")

AXIS_TITLES = {"k": "neighbours k", "p": "mirroring probability p", "noise": "noise probability",
               "graph": "interaction graph"}


def fmt_value(v) -> str:
    """A swept value as axes and labels show it: 5, 0.5, a schedule's label, ? when missing."""
    if v is None:
        return "?"
    return f"{v:g}" if is_num(v) else str(v)


def norm_value(v):
    """A swept value as cells are matched on it: floats rounded to 9 digits (0.7 read as 7/10 equals 0.7
    from a config), lists and mappings as their JSON text, the rest as is."""
    if isinstance(v, float):
        return round(v, 9)
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return v


@dataclass(frozen=True)
class CellKey:
    """One cell's values of the run set's swept keys, in key order: (("k", 5), ("p", 0.5))."""
    items: tuple[tuple[str, object], ...]

    def __getitem__(self, name: str):
        return dict(self.items).get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.items)

    @property
    def k(self):
        return self["k"]

    @property
    def p(self):
        return self["p"]

    def label(self, names=None) -> str:
        """"k=5, p=0.5, noise=0.1" (only `names`, if given)."""
        shown = [(n, v) for n, v in self.items if names is None or n in names]
        if all(v is None for _, v in shown):
            return f"{', '.join(n for n, _ in shown) or 'cell'} n/a"
        return ", ".join(f"{n}={fmt_value(v)}" for n, v in shown)


def ordered_keys(key_lists) -> tuple[str, ...]:
    """The union of several cells' swept keys: k and p first, then the others as first seen."""
    seen = dict.fromkeys(BASE_KEYS)
    for keys in key_lists:
        seen.update(dict.fromkeys(keys))
    return tuple(seen)


def axis_values(values) -> list:
    """Distinct values of one key in axis order: missing first, numbers ascending, then labels in the
    order first seen."""
    seen = list(dict.fromkeys(values))
    numbers = sorted((v for v in seen if is_num(v)), key=float)
    labels = [v for v in seen if v is not None and not is_num(v)]
    return ([None] if None in seen else []) + numbers + labels


def key_values(keys) -> dict[str, list]:
    """CellKeys -> each swept key's distinct values in axis order."""
    names = ordered_keys(k.names for k in keys)
    return {n: axis_values([k[n] for k in keys]) for n in names}


def sort_keys(keys) -> list[CellKey]:
    """CellKeys in table order: by the first key's axis order, then the second's, ..."""
    values = key_values(keys)
    rank = {n: {v: i for i, v in enumerate(vs)} for n, vs in values.items()}
    return sorted(keys, key=lambda key: tuple(rank[n][key[n]] for n in values))


# ------------------------------------------------------------------------------------------ layout

@dataclass(frozen=True)
class Layout:
    """What the phase diagrams draw: `rows` down the y axis, `cols` across x (None: a 1-D strip), and one
    panel per combination of the `panels` keys (the other keys that vary)."""
    rows: str
    cols: str | None
    panels: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for phase.md: which dimensions are drawn, and how the rest are split."""
        drawn = f"{self.rows} (rows) × {self.cols} (columns)" if self.cols else f"{self.rows} (a 1-D strip)"
        return drawn + (f", one panel per value of {', '.join(self.panels)}" if self.panels else "")


def varying(values: dict[str, list]) -> list[str]:
    """The keys with more than one value, in key order."""
    return [n for n, vs in values.items() if len(vs) > 1]


def default_axes(values: dict[str, list]) -> tuple[str, str | None]:
    """k and p when both vary (or nothing varies); else the two keys that vary most (ties in key order),
    in key order; a strip over the one key that varies."""
    moving = varying(values)
    if set(BASE_KEYS) <= set(moving) or not moving:
        return BASE_KEYS
    if len(moving) == 1:
        return moving[0], None
    two = sorted(moving, key=lambda n: -len(values[n]))[:2]
    return tuple(sorted(two, key=moving.index))


def parse_axes(text: str, values: dict[str, list]) -> tuple[str, str | None]:
    """--axes "X,Y" (or one key: a strip) -> (rows, cols), each a key that varies; UserError otherwise."""
    moving = varying(values)
    names = [s.strip() for s in text.split(",")]
    allowed = ", ".join(moving) or "none (every swept key has one value)"
    bad = [n for n in names if n not in moving]
    if not 1 <= len(names) <= 2 or bad or len(set(names)) != len(names):
        what = repr(bad[0]) if bad else repr(text)
        raise UserError(f"--axes {what} is not allowed: one or two different keys that vary, of {allowed}")
    return names[0], (names[1] if len(names) == 2 else None)


def choose_layout(values: dict[str, list], axes: str | None = None) -> Layout:
    """The phase diagrams' layout over the run set's key values (key -> axis values); axes: --axes."""
    rows, cols = parse_axes(axes, values) if axes else default_axes(values)
    return Layout(rows, cols, tuple(n for n in varying(values) if n not in (rows, cols)))


def axis_title(name: str) -> str:
    return AXIS_TITLES.get(name, name)
