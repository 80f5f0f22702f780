"""Numbers and strings as the report shows them: HTML-escaped text, 3-decimal numbers, mean ±
its confidence interval, the regularizer, the strategies; for the HTML page and for plain
text."""

from __future__ import annotations

import html

from forgetlab.config import strategy_sections

# Shown with a sign: differences, where +/− is the point.
SIGNED = ("avg_forgetting", "max_forgetting", "chaudhry_forgetting", "bwt", "fwt", "source_loss")


def e(value: object) -> str:
    """`value` as HTML text, quotes escaped too (safe in attributes)."""
    return html.escape(str(value), quote=True)


def num(value: object, signed: bool = False) -> str:
    """3 decimals, or "n/a" for anything but a number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def pm(agg: dict, key: str) -> str:
    """HTML: the mean of aggregate `key` ± its 95% CI half-width when there are several seeds."""
    item = agg.get(key) or {}
    text = num(item.get("mean"), key in SIGNED)
    if (item.get("n") or 0) > 1 and item.get("ci95") is not None:
        text += f" ± {item['ci95']:.3f} <span class=note>(n={item['n']})</span>"
    return text


def text_num(v: float | None, fmt: str = ".3f") -> str:
    """Plain text: `v` in `fmt`, "-" for None."""
    return "-" if v is None else format(v, fmt)


def text_pm(agg: dict | None, key: str) -> str:
    """Plain text: the mean of aggregate `key`, ± std and the 95% CI with several seeds."""
    item = (agg or {}).get(key) or {}
    mean = item.get("mean")
    if mean is None:
        return "n/a"
    text = f"{mean:+.3f}" if key in SIGNED else f"{mean:.3f}"
    if item.get("n", 1) > 1:
        text += f" ± {item['std']:.3f} (95% CI ±{item['ci95']:.3f}, n={item['n']})"
    return text


def strategy(summary: dict, none: str = "none") -> str:
    """The run's strategies by name, joined by "+" ("replay+lwf"); `none` for a run without."""
    names = [str(s.get("name")) for s in strategy_sections(summary.get("strategy"))]
    return "+".join(names) or none


def regularizer(summary: dict, none: str = "none") -> str:
    """The run's regularizer as "name-curvature λ=…", `none` for a run without one."""
    reg = summary.get("regularizer")
    if not isinstance(reg, dict) or reg.get("name") in (None, "none"):
        return none
    name = "-".join(str(x) for x in (reg["name"], reg.get("curvature")) if x)
    lam = reg.get("lambda")
    return name + (f" λ={lam:g}" if isinstance(lam, (int, float)) else "")
