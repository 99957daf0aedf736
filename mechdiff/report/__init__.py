"""Reports: results rendered for people, as plain text (what the commands print), Markdown
(``summary.md``) and JSON summaries (``summary.json``), from results alone (no model needed).

* :mod:`.text`: ranked tables with intervals, agreements and readings.
* :mod:`.markdown`: the same as Markdown sections.
* :mod:`.summary`: ``summary.json`` / ``summary.md`` of a run.
* :mod:`.sections`: the registry: each result type's text, Markdown and HTML section (a new
  analysis registers its own, no edit here).
* :mod:`.html`: :func:`~mechdiff.report.html.write_report`, one self-contained offline HTML page
  of a results folder.
"""
