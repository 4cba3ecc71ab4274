"""Writing files as MATLAB's `save -v7.3` does, with h5py: a 512-byte text header before the HDF5 data, every
variable stored column-major (h5py sees a MATLAB E × N array as (N, E)) with a MATLAB_class attribute, text as
uint16 UTF-16 code units, cell arrays as object references into `#refs#`, structs as groups."""

from __future__ import annotations

import h5py
import numpy as np

HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."


class Cell(list):
    """A MATLAB 1 × n cell array of the values listed."""


class Struct(dict):
    """A MATLAB scalar struct: field name → value."""


def write_mat73(path, variables: dict) -> None:
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            _write(f, f, name, value)
    with open(path, "r+b") as raw:
        raw.write(HEADER.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")  # header text, subsystem offset, version, "MI"


def _write(f: h5py.File, parent: h5py.Group, name: str, value) -> None:
    if isinstance(value, Struct):
        group = parent.create_group(name)
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        for field, v in value.items():
            _write(f, group, field, v)
    elif isinstance(value, Cell):
        refs = f.require_group("#refs#")
        targets = []
        for k, item in enumerate(value):
            key = f"{name}_{len(refs)}_{k}"
            _write(f, refs, key, item)
            targets.append(refs[key].ref)
        ds = parent.create_dataset(name, data=np.array(targets, dtype=h5py.ref_dtype).reshape(len(targets), 1))
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
    elif isinstance(value, str):
        codes = np.frombuffer(value.encode("utf-16-le"), "<u2").reshape(-1, 1)  # MATLAB 1 × L → stored (L, 1)
        ds = parent.create_dataset(name, data=codes)
        ds.attrs["MATLAB_class"] = np.bytes_("char")
        ds.attrs["MATLAB_int_decode"] = np.int32(2)
    else:
        a = np.asarray(value)
        ds = parent.create_dataset(name, data=a.T)  # column-major: the axes reversed
        ds.attrs["MATLAB_class"] = np.bytes_({np.float64: "double", np.float32: "single"}.get(a.dtype.type, "double"))
