"""Views: rich live view, plain lines, JSON lines. All poll snapshots; none is on the hot path."""
