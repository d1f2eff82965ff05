"""Reading and writing the 2018 `iemocap.pkl` format without trusting the file.

The released file is a Python-2 pickle of nested dicts of numpy arrays. Plain
`pickle.load` would run whatever callable the file names, so reading goes
through an unpickler that admits only the globals numpy arrays need.

Writing produces the same bytes Python 2's `cPickle.dump(obj, f, 2)` produced
(str keys as BINSTRING opcodes, `numpy.core.multiarray` globals), so the
synthetic data and the tests exercise the path the real file takes.
"""

import io
import pickle
import struct
import warnings

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
  """The file names a global outside the numpy allow-list."""


class _NdarrayType:
  """What a file's `numpy.ndarray` global becomes: only `_reconstruct` accepts it.

  Handing out the real class would let a file call `ndarray(shape)` (or
  `_reconstruct` with a large shape) and reserve gigabytes that it never has
  to store; the loader would then touch them all while converting to float32.
  """

  def __call__(self, *args, **kwargs):
    raise UnsafePickleError('refusing to call numpy.ndarray: a data file stores array bytes, '
                            'not an allocation')

  def __repr__(self):
    return 'numpy.ndarray'


_NDARRAY = _NdarrayType()


def _reconstruct(subtype, shape, dtype):
  """numpy's `_reconstruct`, for the empty array that BUILD then fills from the file's bytes."""
  if subtype is not _NDARRAY:
    raise UnsafePickleError(f'refusing _reconstruct of {subtype!r}: only plain numpy arrays '
                            'are allowed')
  if not isinstance(shape, tuple) or not all(isinstance(d, int) for d in shape) or 0 not in shape:
    raise UnsafePickleError(f'refusing _reconstruct with shape {shape!r}: numpy pickles an '
                            'empty array and fills it from the data that follows')
  multiarray = np._core.multiarray  # pylint: disable=protected-access
  return multiarray._reconstruct(np.ndarray, shape, dtype)


def _allowed_globals():
  # numpy >= 2 moved `numpy.core` to `numpy._core`; files name either, and the
  # old name is mapped without importing the deprecated shim.
  multiarray = np._core.multiarray  # pylint: disable=protected-access
  numeric = np._core.numeric  # pylint: disable=protected-access
  table = {
      ('numpy', 'ndarray'): _NDARRAY,
      ('numpy', 'dtype'): np.dtype,
  }
  for package in ('numpy.core', 'numpy._core'):
    table[(f'{package}.multiarray', '_reconstruct')] = _reconstruct
    table[(f'{package}.multiarray', 'scalar')] = multiarray.scalar
    table[(f'{package}.numeric', '_frombuffer')] = numeric._frombuffer
  # Python 3 protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1').
  table[('_codecs', 'encode')] = _latin1_encode
  return table


def _latin1_encode(text, encoding='latin1'):
  if encoding != 'latin1':
    raise UnsafePickleError(f'refusing _codecs.encode with encoding {encoding!r}')
  return text.encode('latin1')


class _RestrictedUnpickler(pickle.Unpickler):
  _ALLOWED = _allowed_globals()

  def find_class(self, module, name):
    try:
      return self._ALLOWED[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f'refusing to load global {module}.{name}: only numpy arrays, '
          'dicts, lists, tuples and plain scalars are allowed') from None

  def persistent_load(self, pid):
    raise UnsafePickleError('refusing persistent ids in a data file')


def restricted_load(file):
  """Unpickles numpy data from a binary file object, never running its code.

  `encoding='latin1'` is what numpy documents for Python-2 array pickles; it
  turns Python-2 str keys into str, while Python-3 bytes keys stay bytes.
  numpy's warnings are silenced: a damaged file makes `dtype` warn about odd
  arguments before it fails, and the user should see one line, the error.
  """
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return _RestrictedUnpickler(file, encoding='latin1').load()


class _Py2Writer:
  """Protocol-2 opcodes as CPython 2.7's cPickle wrote them for numpy data."""

  def __init__(self, out):
    self._out = out
    self._memo = {}

  def dump(self, obj):
    self._out.write(b'\x80\x02')
    self._save(obj)
    self._out.write(b'.')

  def _put(self, obj):
    index = len(self._memo)
    self._memo[id(obj)] = (index, obj)
    if index < 256:
      self._out.write(b'q' + bytes([index]))
    else:
      self._out.write(b'r' + struct.pack('<I', index))

  def _get(self, obj):
    index = self._memo[id(obj)][0]
    if index < 256:
      self._out.write(b'h' + bytes([index]))
    else:
      self._out.write(b'j' + struct.pack('<I', index))

  def _save(self, obj):
    if id(obj) in self._memo:
      self._get(obj)
      return
    if obj is None:
      self._out.write(b'N')
    elif obj is True or obj is False:
      self._out.write(b'\x88' if obj else b'\x89')
    elif isinstance(obj, int):
      self._save_int(obj)
    elif isinstance(obj, float):
      self._out.write(b'G' + struct.pack('>d', obj))
    elif isinstance(obj, (str, bytes)):
      self._save_str(obj)
    elif isinstance(obj, tuple):
      self._save_tuple(obj)
    elif isinstance(obj, list):
      self._out.write(b']')
      self._put(obj)
      if obj:
        self._out.write(b'(')
        for item in obj:
          self._save(item)
        self._out.write(b'e')
    elif isinstance(obj, dict):
      self._out.write(b'}')
      self._put(obj)
      if obj:
        self._out.write(b'(')
        for key, value in obj.items():
          self._save(key)
          self._save(value)
        self._out.write(b'u')
    elif isinstance(obj, np.ndarray):
      self._save_array(obj)
    else:
      raise TypeError(f'cannot write {type(obj).__name__} in the 2018 format')

  def _save_int(self, value):
    if 0 <= value < 256:
      self._out.write(b'K' + bytes([value]))
    elif 0 <= value < 65536:
      self._out.write(b'M' + struct.pack('<H', value))
    elif -2**31 <= value < 2**31:
      self._out.write(b'J' + struct.pack('<i', value))
    else:
      raise ValueError(f'integer {value} does not fit a Python-2 int opcode')

  def _save_str(self, value):
    # Python 2 had one str type, stored as 8-bit BINSTRING whatever its use.
    data = value.encode('latin1') if isinstance(value, str) else value
    if len(data) < 256:
      self._out.write(b'U' + bytes([len(data)]) + data)
    else:
      self._out.write(b'T' + struct.pack('<I', len(data)) + data)
    # cPickle memoised every string; the memo is kept for identical objects.
    self._put(value)

  def _save_tuple(self, items):
    if not items:
      self._out.write(b')')
      return
    if len(items) <= 3:
      for item in items:
        self._save(item)
      self._out.write(bytes([0x84 + len(items)]))
    else:
      self._out.write(b'(')
      for item in items:
        self._save(item)
      self._out.write(b't')
    self._put(items)

  def _global(self, module, name):
    self._out.write(b'c' + module.encode() + b'\n' + name.encode() + b'\n')

  def _save_dtype(self, dtype):
    _, args, state = dtype.__reduce__()
    self._global('numpy', 'dtype')
    # Python-2 numpy wrote the align/copy flags as ints.
    self._save(tuple(int(a) if isinstance(a, bool) else a for a in args))
    self._out.write(b'R')
    self._save(state)
    self._out.write(b'b')

  def _save_array(self, array):
    if array.dtype.byteorder == '>' or array.dtype.hasobject:
      raise TypeError(f'cannot write a {array.dtype} array in the 2018 format')
    self._global('numpy.core.multiarray', '_reconstruct')
    self._global('numpy', 'ndarray')
    self._save((0,))
    self._save(b'b')
    self._out.write(b'\x87R')
    self._put(array)
    self._out.write(b'(')
    self._save_int(1)
    self._save(tuple(int(d) for d in array.shape))
    self._save_dtype(array.dtype)
    self._out.write(b'\x89')
    self._save_str(np.ascontiguousarray(array).tobytes())
    self._out.write(b'tb')


def py2_dumps(obj):
  """Returns `obj` pickled as Python 2.7 wrote protocol 2 (str keys as bytes)."""
  out = io.BytesIO()
  _Py2Writer(out).dump(obj)
  return out.getvalue()
