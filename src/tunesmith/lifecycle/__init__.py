"""Model lifecycle: named versions with lineage, promotion gates, rollback, and serving ``name@alias`` (torch-free)."""
from .gates import promote, rollback
from .versions import Version, register, resolve, set_alias, versions

__all__ = ["Version", "register", "resolve", "set_alias", "versions", "promote", "rollback"]
