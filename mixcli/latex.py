"""``compare --format latex``: a booktabs table for a paper.

One row per group, ``mean $\\pm$ std`` over seeds in each metric column (the same numbers and rounding as
the terminal table), the best mean of each column in bold (within each block when the table is split with
``--within``; blocks are separated by ``\\midrule``), and the caption naming the split, the epoch selection
rule and the marking. Needs ``\\usepackage{booktabs}`` in the document.
"""
from __future__ import annotations

import re

from .metrics import metric_info

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape(text: str) -> str:
    """``text`` as LaTeX text (special characters escaped, ± as ``$\\pm$``)."""
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _SPECIAL[m.group()], str(text))
    return out.replace("±", r"$\pm$")


def _head(metric: str) -> str:
    info = metric_info(metric)
    unit = r" (\%)" if info.percent else ""
    arrow = r"$\uparrow$" if info.higher_is_better else r"$\downarrow$"
    return f"{escape(metric)}{unit} {arrow}"


def latex_table(c) -> str:
    """The LaTeX source of the comparison ``c`` (:class:`mixcli.report.Comparison`)."""
    from .report import best_note, fmt_value

    keys = [k.rsplit(".", 1)[-1] if [x.rsplit(".", 1)[-1] for x in c.by].count(k.rsplit(".", 1)[-1]) == 1
            else k for k in c.by]
    spec = "l" * len(c.by) + "r" + "c" * len(c.metrics)
    note = best_note(c, "in bold")
    caption = f"{c.title}. {note[0].upper()}{note[1:]}."
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{escape(caption)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join([*map(escape, keys), "$n$", *map(_head, c.metrics)]) + r" \\", r"\midrule"]
    for i in range(len(c.table)):
        row = c.table.iloc[i]
        if c.within and i and row[c.within] != c.table.iloc[i - 1][c.within]:
            lines.append(r"\midrule")
        vals = [escape(row[k]) for k in c.by] + [str(int(row["n"]))]
        for m in c.metrics:
            mean, std = fmt_value(m, row[f"{m}_mean"]), fmt_value(m, row[f"{m}_std"])
            one = int(row["n"]) == 1 or std == "-"  # a single run: its value alone, as in the other formats
            if c.is_best(m, i):
                vals.append(rf"$\mathbf{{{mean}}}$" if one else rf"$\mathbf{{{mean}}} \pm \mathbf{{{std}}}$")
            else:
                vals.append(f"${mean}$" if one else rf"${mean} \pm {std}$")
        lines.append(" & ".join(vals) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    lines += [f"% {n}" for n in c.notes]
    return "\n".join(lines) + "\n"
