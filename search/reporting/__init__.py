"""What a person reads: status text, the report (summary.md, summary.json, index.html, figures) and
the note shown on the dashboard."""
