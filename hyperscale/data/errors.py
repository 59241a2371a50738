"""The data pipeline's error type (defined with the others in :mod:`hyperscale.errors`)."""
from ..errors import DataError

__all__ = ["DataError"]
