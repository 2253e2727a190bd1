"""The Trio shell: every await lives here."""
