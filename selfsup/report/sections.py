"""The sections of ``report.html`` and their registry: what a run directory holds (:class:`RunContents`), what a
section is (:class:`Section`: an id, a title, a place on the page, ``applies(run)``, ``render(run)``, optionally
``warnings(run)`` and ``header(run)``), and :func:`register_section`.

A capability's report module (``streams/stream_report.py``, ``finetune/finetune_report.py``,
``robustness/robustness_report.py``) defines its sections and registers them when it is imported;
:func:`registered_sections` imports every one of those modules first (``selfsup.deferred.REPORT_SECTIONS``), so any
use of selfsup has them. :mod:`selfsup.report.html` renders the page from the registry and knows no capability
itself."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..deferred import REPORT_SECTIONS, load_all


@dataclass
class RunContents:
    """What a run directory holds, read once: the config, the evaluation, the training metrics, and the JSON files
    the registered sections ask for (:attr:`Section.files`), by file name."""
    path: Path
    config_text: str | None = None
    config: dict = field(default_factory=dict)
    results: dict | None = None
    train: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def data(self, name: str) -> dict | None:
        """The JSON object of file ``name`` (one a section asked for), None when absent or unreadable."""
        return self.files.get(name)

    def data_by_suffix(self, prefix: str) -> dict[str, dict]:
        """``{suffix: data}`` of the files ``<prefix>_<suffix>.json`` (a pattern a section asked for), sorted."""
        start = len(prefix) + 1
        return {name[start:-len(".json")]: d for name, d in sorted(self.files.items())
                if name.startswith(prefix + "_") and name.endswith(".json")}


@dataclass(frozen=True)
class HeaderFacts:
    """A section's part of the page header."""
    kind: str = ""  # the run's kind, when this section's data makes the run one ("stream", "fine-tuning")
    trained: tuple[str, str] | None = None  # in place of the config's SSL method: what the run actually trains
    facts: tuple[tuple[str, str], ...] = ()  # (name, value) cards after the method and the data


class Section:
    """One section of the page. A subclass sets the class attributes and overrides ``render`` (and what else it
    needs); :func:`register_section` adds an instance to the page.

    ``order``: the place on the page, smallest first (the core sections of :mod:`selfsup.report.html` use 10 to 50).
    ``rank``: how much the section's data says what kind of run this is (0: an add-on any run may have, such as
    robustness); header facts and warnings are gathered in rank order (lowest first, then by ``order``), and the
    header names the kind of the highest-ranked section that names one. ``files``: the JSON files (names or glob
    patterns) the section reads, read once into :attr:`RunContents.files`."""
    id: str = ""
    title: str = ""
    order: int = 100
    rank: int = 0
    files: tuple[str, ...] = ()

    def applies(self, run: RunContents) -> bool:
        """Whether the run has this section's data (its warnings and header facts count only then)."""
        return True

    def render(self, run: RunContents) -> str:
        """The section's body (without its title); empty: the section is left out."""
        raise NotImplementedError

    def warnings(self, run: RunContents) -> list[str]:
        """Sentences for the warnings box at the top of the page."""
        return []

    def header(self, run: RunContents) -> HeaderFacts | None:
        """The section's part of the page header."""
        return None


_SECTIONS: dict[str, Section] = {}


def register_section(section: Section) -> Section:
    """Add ``section`` to every page rendered from now on (registering its id again replaces the earlier one)."""
    if not section.id or not section.title:
        raise ValueError("a report section needs an id and a title")
    _SECTIONS[section.id] = section
    return section


def unregister_section(section_id: str) -> None:
    """Remove a registered section (if registered)."""
    _SECTIONS.pop(section_id, None)


def registered_sections() -> list[Section]:
    """Every registered section in page order (the capability packages' sections loaded first: see
    selfsup.deferred)."""
    load_all(REPORT_SECTIONS)
    return sorted(_SECTIONS.values(), key=lambda s: s.order)


def by_rank(sections: list[Section]) -> list[Section]:
    """``sections`` in rank order, lowest first (page order among equal ranks)."""
    return sorted(sections, key=lambda s: (s.rank, s.order))
