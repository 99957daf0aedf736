"""Reports: results rendered for people, as plain text (what the commands print), Markdown
(``summary.md``) and JSON summaries (``summary.json``), from results alone (no model needed).

* :mod:`.text`: ranked tables with intervals, agreements and readings.
* :mod:`.markdown`: the same as Markdown sections.
* :mod:`.summary`: ``summary.json`` / ``summary.md`` of a run.
"""
