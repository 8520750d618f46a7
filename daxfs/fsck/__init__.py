"""`daxfs check` and `daxfs check --repair`: proving an image consistent
(check.py, one method per invariant) and mending it (repair.py).  Uses the
engine below it; nothing in the engine imports this package."""
