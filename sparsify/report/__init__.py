"""The size/error report: built from an archive's manifest, rendered as a table, JSON or Markdown."""
