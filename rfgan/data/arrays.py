"""Arrays named on the command line, read a block of rows at a time: `FILE.npy`, `FILE.npz:key`, `FILE.h5:/group/key`
and `FILE.mat:key` (MATLAB v7.3 is HDF5 and read with h5py; MATLAB v5 with scipy.io).

Shapes are given as the file's own documentation gives them: MATLAB stores arrays column-major, so h5py sees a
MATLAB E × N variable as (N, E); a variable with a `MATLAB_class` attribute is shown here with its axes reversed back
to MATLAB's order. Only `.npz` members and MATLAB v5 variables are read whole (neither format can be sliced).
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rfgan.errors import DataError, UsageError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
# MATLAB keeps the targets of cell arrays and struct arrays in these groups: not variables.
MATLAB_INTERNAL = ("#refs#", "#subsystem#")
ELECTRODE_AXES = ("auto", "first", "last")
_REF = re.compile(r"^(?P<path>.+?\.(?:npy|npz|h5|hdf5|hdf|he5|mat|nwb))(?::(?P<key>.+))?$", re.IGNORECASE)


def split_ref(ref: str) -> tuple[str, str | None]:
    """`FILE.ext:key` → (FILE.ext, key); a reference without a key (a .npy file) gives key None."""
    m = _REF.match(ref)
    if m is None:
        return ref, None
    return m["path"], m["key"]


def file_kind(path: str, what: str) -> str:
    """'npy', 'npz', 'hdf5' (also MATLAB v7.3, whose HDF5 starts after a 512-byte header) or 'mat5', from the bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512 + len(HDF5_SIGNATURE))
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror}).") from e
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(b"PK"):
        return "npz"
    if head.startswith(HDF5_SIGNATURE) or head[512:].startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        return "mat5"
    raise DataError(
        f"{path}: cannot read the {what}: it is not a .npy array file (no .npy header), nor .npz, HDF5 (.h5, MATLAB "
        "v7.3, NWB) or MATLAB v5; save the array with numpy.save."
    )


def load_npy(path: str, what: str, mmap: bool = False) -> np.ndarray:
    # NumPy's own errors for a file that is not a .npy array advise allow_pickle=True, which would run code from
    # the file: look at the header first.
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror}).") from e
    if head.startswith(b"PK"):
        raise DataError(
            f"{path}: cannot read the {what}: it is a .npz archive, not a .npy array file; save the "
            "array alone with numpy.save."
        )
    if head != NPY_MAGIC:
        raise DataError(
            f"{path}: cannot read the {what}: it is not a .npy array file (no .npy header: a text or "
            "other file under a .npy name?); save the array with numpy.save."
        )
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        # Without mmap NumPy says allow_pickle, with it "Python objects in dtype": an object array either way.
        if "allow_pickle" not in str(e) and "Python objects" not in str(e):
            raise DataError(f"{path}: cannot read the {what} as a .npy array ({e}).") from e
        raise DataError(
            f"{path}: cannot read the {what}: it holds Python objects (an object array), not numbers; "
            "save a numeric array with numpy.save."
        ) from e
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the {what} as a .npy array ({e}).") from e
    return array


@dataclass(frozen=True)
class Stored:
    """One array in a file, not yet read: `data` is an np.memmap, ndarray or h5py.Dataset in its stored order."""

    ref: str  # as the user named it, for messages
    data: Any
    matlab: bool = False  # stored column-major: the documented shape is data.shape reversed

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[::-1]) if self.matlab else tuple(self.data.shape)

    def read(self) -> np.ndarray:
        """The whole array in its documented order (small arrays: RF fits, reliabilities)."""
        a = np.asarray(self.data[()])
        return a.T if self.matlab else a


def open_array(ref: str, what: str, stack: ExitStack, default_key: str | None = None) -> Stored:
    """The array `ref` names, its file kept open on `stack`. A key that is missing fails with the keys present."""
    path, key = split_ref(ref)
    key = key or default_key
    kind = file_kind(path, what)
    if kind == "npy":
        return Stored(ref, load_npy(path, what, mmap=True))
    if key is None:
        raise DataError(
            f"{path}: cannot read the {what}: it is a {'.npz archive' if kind == 'npz' else 'file of several arrays'}"
            f", not a .npy array file; name the array as {path}:KEY (keys present: {list_keys(path)})."
        )
    if kind == "npz":
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise DataError(f"{path} has no array {key!r} (the {what}); keys present: {archive.files}.")
            try:
                return Stored(ref, archive[key])
            except ValueError as e:
                raise DataError(f"{path}:{key}: cannot read the {what}: it holds Python objects, not numbers.") from e
    if kind == "mat5":
        return Stored(ref, _mat5_variable(path, key, what))
    f = stack.enter_context(_open_h5(path, what))
    node = _h5_node(f, path, key, what)
    import h5py

    if not isinstance(node, h5py.Dataset):
        raise DataError(f"{path}:{key} is a group, not an array (the {what}); keys present: {list_keys(path)}.")
    return Stored(ref, node, matlab="MATLAB_class" in node.attrs)


def _open_h5(path: str, what: str):
    try:
        import h5py
    except ImportError as e:
        raise DataError(f"{path}: reading HDF5 / MATLAB v7.3 files needs h5py: pip install h5py.") from e
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} as HDF5 ({e}).") from e


def _h5_node(f, path: str, key: str, what: str):
    try:
        return f[key]
    except KeyError:
        raise DataError(f"{path} has no {key!r} (the {what}); keys present: {list_keys(path)}.") from None


def list_keys(path: str, limit: int = 30) -> list[str]:
    """The names of the arrays (and MATLAB variables) in a file, for messages."""
    kind = file_kind(path, "file")
    if kind == "npz":
        with np.load(path, allow_pickle=False) as archive:
            return archive.files[:limit]
    if kind == "mat5":
        import scipy.io

        return [name for name, _, _ in scipy.io.whosmat(path)][:limit]
    if kind != "hdf5":
        return []
    import h5py

    keys: list[str] = []
    with h5py.File(path, "r") as f:
        if any("MATLAB_class" in f[k].attrs for k in f):
            # A MATLAB file: its variables are the top-level names; what is inside a struct is not a variable.
            return [k for k in f if k not in MATLAB_INTERNAL][:limit]

        def visit(name: str, node) -> None:
            if isinstance(node, h5py.Dataset) and len(keys) < limit:
                keys.append("/" + name)

        f.visititems(visit)
    return keys


def _mat5_variable(path: str, key: str, what: str) -> np.ndarray:
    import scipy.io

    present = [name for name, _, _ in scipy.io.whosmat(path)]
    if key not in present:
        raise DataError(f"{path} (MATLAB v5) has no variable {key!r} (the {what}); variables present: {present}.")
    try:
        return scipy.io.loadmat(path, variable_names=[key])[key]
    except (ValueError, NotImplementedError, OSError) as e:
        raise DataError(
            f"{path}: cannot read {key!r} from this MATLAB v5 file ({e}); save it as v7.3 in MATLAB "
            f"(save(..., '-v7.3')) and try again."
        ) from e


def read_variable(ref: str, what: str, default_key: str | None = None) -> np.ndarray:
    """A small array read whole, in its documented order (MATLAB's for .mat files)."""
    with ExitStack() as stack:
        return open_array(ref, what, stack, default_key).read()


@dataclass(frozen=True)
class ResponseRows:
    """Responses read a block of stimulus rows at a time, as (n, E) float32, whichever axis holds the electrodes.

    The electrode axis is the first or the last axis of the documented shape; the other axes, in stored order, are
    flattened into rows (a MATLAB E × N × R array gives rows r·N + n). `keep` selects electrode columns.
    """

    stored: Stored
    electrode_axis: int  # of stored.data
    keep: np.ndarray | None = None  # (E_kept,) column indices, or None for all

    @property
    def stimulus_shape(self) -> tuple[int, ...]:
        return tuple(n for ax, n in enumerate(self.stored.data.shape) if ax != self.electrode_axis)

    def __len__(self) -> int:
        return int(np.prod(self.stimulus_shape))

    @property
    def n_electrodes(self) -> int:
        return self.stored.data.shape[self.electrode_axis] if self.keep is None else len(self.keep)

    def select(self, keep: np.ndarray) -> ResponseRows:
        return replace(self, keep=keep if self.keep is None else self.keep[keep])

    def read(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), E) float32. Reads only the rows asked for: h5py is given their indices, never the whole array."""
        order, inverse = np.unique(rows, return_inverse=True)  # h5py takes increasing indices only
        index = np.unravel_index(order, self.stimulus_shape)
        data, eax = self.stored.data, self.electrode_axis
        if len(index) == 1:
            block = _take(data, (), index[0], eax == 0)
        else:
            outer, inner = index
            block = np.empty((len(order), data.shape[eax]), data.dtype)
            for o in np.unique(outer):
                at = np.flatnonzero(outer == o)
                block[at] = _take(data, (int(o),), inner[at], eax == 0)
        _check_float32_range(block, self.stored.ref)
        block = np.asarray(block, np.float32)
        if self.keep is not None:
            block = block[:, self.keep]
        if len(order) == len(rows) and np.array_equal(order, rows):
            return block  # already in the order asked for: no copy
        return block[inverse.reshape(-1)]


F32 = np.finfo(np.float32)
F32_MAX, F32_TINY = float(F32.max), float(F32.tiny)  # as Python floats: compared with np.float32, 1e300 overflows


def _check_float32_range(block: np.ndarray, ref: str) -> None:
    """Refuse finite responses that a dataset's float32 cannot hold: beyond its range they became infinite (and were
    called NaN/infinite), below its resolution every one became 0 (and was called constant)."""
    if not np.issubdtype(block.dtype, np.floating) or np.finfo(block.dtype).bits <= 32:
        return
    finite = np.abs(block[np.isfinite(block)])
    if not finite.size:
        return
    largest = float(finite.max())
    if largest > F32_MAX or 0 < largest < 1e3 * F32_TINY:
        raise DataError(
            f"{ref}: responses reach {largest:.3g}, {'beyond' if largest > 1 else 'below'} what float32 (which "
            f"datasets store) holds ({F32_TINY:.3g} to {F32_MAX:.3g}); scale them (e.g. to spikes/s) before ingesting."
        )


def _take(data: Any, outer: tuple[int, ...], index: np.ndarray, electrodes_first: bool) -> np.ndarray:
    """(len(index), E): the stimulus entries `index` (increasing) of data[outer] (the leading stimulus axes fixed),
    electrodes first or last. Asks the file for those entries only: a slice when they are contiguous, else a list."""
    sel: Any = slice(int(index[0]), int(index[-1]) + 1) if index[-1] - index[0] + 1 == len(index) else index
    if electrodes_first:
        return np.asarray(data[(slice(None), *outer, sel)]).T
    return np.asarray(data[(*outer, sel)])


def response_rows(stored: Stored, n_electrodes: int, electrode_axis: str = "auto", rfs_name: str = "the RF table"):
    """Find the electrode axis of `stored` by its length (the RF table's row count), or as forced by
    `electrode_axis` ('first' or 'last' axis of the documented shape)."""
    shape = stored.shape
    if len(shape) not in (2, 3) or not np.issubdtype(stored.data.dtype, np.number):
        raise DataError(
            f"{stored.ref}: responses are {stored.data.dtype}{shape}; expected a numeric 2-D array (stimuli × "
            "electrodes, either way round) or 3-D with electrodes first or last."
        )
    if np.issubdtype(stored.data.dtype, np.complexfloating):
        # Casting to float32 would keep the real part only (NumPy says so with a warning nobody reads).
        raise DataError(
            f"{stored.ref}: responses are complex ({stored.data.dtype}); give real values, e.g. their magnitude "
            "(numpy.abs) or real part, saved with numpy.save."
        )
    fits = [ax for ax in (0, len(shape) - 1) if shape[ax] == n_electrodes]
    if electrode_axis == "auto":
        if not fits:
            raise DataError(
                f"{stored.ref} has shape {shape} but {rfs_name} has {n_electrodes} electrodes: neither its first "
                "nor its last axis matches; the RF table needs one row per electrode, in the order of the responses."
            )
        if len(fits) > 1:
            raise UsageError(
                f"{stored.ref} has shape {shape}: both axes could be the {n_electrodes} electrodes; say which with "
                "--electrode-axis first or --electrode-axis last."
            )
        axis = fits[0]
    else:
        axis = 0 if electrode_axis == "first" else len(shape) - 1
        if shape[axis] != n_electrodes:
            raise DataError(
                f"{stored.ref} has shape {shape}: its {electrode_axis} axis has {shape[axis]} entries but "
                f"{rfs_name} has {n_electrodes} electrodes."
            )
    stored_axis = len(shape) - 1 - axis if stored.matlab else axis
    if len(shape) == 3 and stored_axis == 1:
        raise DataError(f"{stored.ref}: a 3-D response array needs its electrodes on its first or last axis.")
    return ResponseRows(stored, stored_axis)


def read_strings(ref: str, what: str, field: str | None = None) -> list[str]:
    """A list of strings from a file: a MATLAB cell array of char arrays, a char matrix (one string per row) or a
    struct array (its `field`), from v7.3 or v5; or an HDF5 / .npy string array."""
    path, key = split_ref(ref)
    kind = file_kind(path, what)
    if key is None and kind != "npy":
        raise UsageError(f"{ref}: name the {what} inside the file as {path}:KEY (keys present: {list_keys(path)}).")
    if kind == "mat5":
        return _mat5_strings(_mat5_variable(path, key, what), f"{path}:{key}", what, field)
    if kind in ("npy", "npz"):
        with ExitStack() as stack:
            a = open_array(ref, what, stack).data
        return [str(s) for s in np.asarray(a).ravel()]
    import h5py

    with _open_h5(path, what) as f:
        node = _h5_node(f, path, key, what)
        if isinstance(node, h5py.Group):
            if field is None or field not in node:
                raise DataError(
                    f"{path}:{key} is a struct; name the field that holds the {what} with a field flag "
                    f"(fields present: {sorted(node)})."
                )
            node = node[field]
        return _h5_strings(f, node, f"{path}:{key}", what)


def _h5_strings(f, node, where: str, what: str) -> list[str]:
    import h5py

    cls = node.attrs.get("MATLAB_class", b"")
    cls = cls.decode() if isinstance(cls, bytes) else str(cls)
    if node.dtype == h5py.ref_dtype:
        # A cell array (or a struct array's field): each element is a reference to its own char array.
        out = []
        for ref in np.asarray(node[()]).T.ravel():  # MATLAB's column-major order of elements
            out.extend(_h5_strings(f, f[ref], where, what))
        return out
    data = np.asarray(node[()])
    if cls == "char" or (cls == "" and data.dtype == np.uint16):
        if "MATLAB_empty" in node.attrs:
            return [""]
        # MATLAB chars are UTF-16 code units; a char matrix is padded with spaces to its longest row.
        rows = np.atleast_2d(data.T)
        return [r.astype("<u2").tobytes().decode("utf-16-le").rstrip() for r in rows]
    if data.dtype.kind in "SOU":
        return [s.decode() if isinstance(s, bytes) else str(s) for s in data.ravel()]
    raise DataError(f"{where}: the {what} hold {cls or data.dtype} values, not text (expected a cell array of text).")


def _mat5_strings(a: np.ndarray, where: str, what: str, field: str | None) -> list[str]:
    if a.dtype.names:
        if field is None or field not in a.dtype.names:
            raise DataError(
                f"{where} is a struct; name the field that holds the {what} (fields present: {list(a.dtype.names)})."
            )
        a = a[field]
    if a.dtype.kind == "U":
        return [s.rstrip() for s in a.ravel()] if a.ndim else [str(a)]
    out = []
    for item in a.T.ravel():
        if isinstance(item, np.ndarray):
            out.extend(_mat5_strings(item, where, what, field) if item.size else [""])
        else:
            out.append(str(item))
    return out
