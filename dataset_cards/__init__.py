"""Dataset card templates (Jinja2): one per builder, sharing the partials that start with ``_``."""
