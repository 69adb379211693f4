"""One subpackage per role; each runnable with ``python -m``."""
