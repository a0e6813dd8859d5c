"""Input/output: scalable HDF5 output and XDMF (:mod:`.h5io`), gathering for small runs."""
from .fields import grid_attrs, write_fields
from .gather import gather_cells, gather_faces, owned_face_block
from .h5io import (read_attrs, read_cells, read_faces, read_global, read_replicated, write_h5,
                   write_xdmf)

__all__ = ["write_fields", "write_h5", "write_xdmf", "grid_attrs", "read_cells", "read_faces",
           "read_global", "read_attrs", "read_replicated", "gather_cells", "gather_faces",
           "owned_face_block"]
