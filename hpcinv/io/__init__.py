"""Input/output: gathering distributed fields and writing HDF5."""
from .fields import write_fields
from .gather import gather_cells, gather_faces, owned_face_block

__all__ = ["write_fields", "gather_cells", "gather_faces", "owned_face_block"]
