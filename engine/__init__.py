"""seamline: a declarative integration engine for Adobe Commerce, ERPs and CRMs."""

__all__ = ["__version__"]

__version__ = "0.1.0"
