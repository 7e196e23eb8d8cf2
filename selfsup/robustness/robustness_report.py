"""The robustness section of ``report.html`` (registered when this module is imported; see
:mod:`selfsup.report.sections`): adversarial accuracy per L∞ budget and attack (``robustness_<classifier>.json``)
and accuracy under common corruptions per severity (``corruptions_<classifier>.json``); the attack libraries'
warnings (such as suspected gradient masking) go to the page's warnings box."""
from __future__ import annotations

from ..number_format import pct
from ..report.html_parts import escape, join_parts, table
from ..report.sections import RunContents, Section, register_section


def _attacks(clf: str, rep: dict) -> str:
    eps = rep.get("eps") or {}
    if not eps:
        return ""
    cols = list(next(iter(eps.values())).keys())
    rows = [[e, *[pct(per.get(c, {}).get("accuracy")) + (" ⚠" if per.get(c, {}).get("library_warnings") else "")
                  for c in cols]] for e, per in eps.items()]
    return (f"<h3>Adversarial attacks: {escape(clf)} classifier, {escape(rep.get('n', '?'))} test images, clean "
            f"accuracy {pct(rep.get('clean'))}</h3>"
            + table(["L∞ eps", *cols], rows, cls=f"robustness robustness-{clf}")
            + ("<p class=\"note\">⚠: the attack library warned (see the warnings at the top).</p>"
               if any("⚠" in c for r in rows for c in r) else ""))


def _corruptions(clf: str, rep: dict) -> str:
    per = rep.get("corruptions") or {}
    if not per:
        return ""
    sev = sorted({s for v in per.values() for s in v}, key=lambda s: int(s) if s.isdigit() else s)
    rows = [[name, *[pct(v.get(s), 1) for s in sev], pct(sum(v.values()) / len(v), 1) if v else "–"]
            for name, v in per.items()]
    return (f"<h3>Common corruptions: {escape(clf)} classifier, {escape(rep.get('n', '?'))} test images, clean "
            f"{pct(rep.get('clean'))}, mean over corruptions and severities "
            f"{pct(rep.get('mean_corruption_accuracy'))}</h3>"
            + table(["corruption", *[f"severity {s}" for s in sev], "mean"], rows,
                    cls=f"corruptions corruptions-{clf}"))


class RobustnessSection(Section):
    """Attacks and corruptions of any run's encoder (``selfsup attack``, ``selfsup corrupt``), one table per
    classifier."""
    id, title, order, rank = "robustness", "Robustness", 90, 0
    files = ("robustness_*.json", "corruptions_*.json")

    def applies(self, run: RunContents) -> bool:
        return bool(run.data_by_suffix("robustness") or run.data_by_suffix("corruptions"))

    def render(self, run: RunContents) -> str:
        return join_parts(*[_attacks(clf, rep) for clf, rep in run.data_by_suffix("robustness").items()],
                          *[_corruptions(clf, rep) for clf, rep in run.data_by_suffix("corruptions").items()])

    def warnings(self, run: RunContents) -> list[str]:
        return [f"robustness ({clf} classifier, eps {eps}, {attack}): {w}"
                for clf, rep in run.data_by_suffix("robustness").items()
                for eps, per in (rep.get("eps") or {}).items()
                for attack, v in per.items() for w in v.get("library_warnings") or []]


register_section(RobustnessSection())
