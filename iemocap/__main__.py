"""`python -m iemocap {inspect,info,synth,convert}`: inspect, generate or convert data files.

`inspect` detects the format from the content (iemocap.formats) and reports the set, its task,
splits, shapes, labels, non-finite counts and traps; `info` is its older name, whose JSON for an
IEMOCAP file keeps the older shape (a list of per-emotion records, one record with --emotion).
"""

import argparse
import dataclasses
import json
import os
import sys

from iemocap import data as data_lib
from iemocap import formats
from iemocap import synthetic
from iemocap import synthetic_formats
from iemocap.errors import UserError


def split_info(split):
  return {'n': split.n, 'audio_dim': int(split.audio.shape[1]),
          'visual_dim': int(split.visual.shape[1]), 'text_shape': list(split.text.shape[1:]),
          'positive_rate': round(split.positive_rate, 4),
          'nonfinite_replaced': split.nonfinite_replaced,
          'replaced': {key: dataclasses.asdict(counts) for key, counts in
                       (('covarep', split.audio_replaced), ('facet', split.visual_replaced))},
          'replaced_text': split.replaced_text()}


def info(path, emotion=None, source=None):
  """Per emotion and split of an IEMOCAP file: N, dimensions, positive rate, non-finite values
  replaced."""
  source = source or formats.read(path)
  raw = formats.mult_iemocap_raw(source) if source.format == formats.MULT else source.raw
  path = source.path
  emotions = [data_lib.normalize_emotion(emotion)] if emotion else data_lib.emotions_in(raw)
  if not emotions:
    raise data_lib.DataError(f'{path} holds none of the emotions {", ".join(data_lib.EMOTIONS)}')
  reports = []
  for name in emotions:
    dataset = data_lib.build_dataset(raw, name, path)
    reports.append({'emotion': name, 'path': path,
                    'synthetic': synthetic.describe(path) is not None,
                    'splits': {s: split_info(dataset.split(s)) for s in data_lib.SPLITS}})
  return reports


def _array_info(array):
  return {'shape': list(array.shape), 'dtype': str(array.dtype)}


def inspect(path, emotion=None):
  """Everything `inspect` reports, as one JSON-able dict."""
  source = formats.read(path)
  report = {'path': source.path, 'format': source.format, 'dataset': source.dataset,
            'task': source.task, 'synthetic': (not os.path.isdir(source.path) and ',' not in
                                               source.path and synthetic.describe(source.path)
                                               is not None)}
  notes = []
  if source.is_iemocap:
    report['emotions'] = info(path, emotion, source)
    sizes = [report['emotions'][0]['splits'][s]['n'] for s in data_lib.SPLITS]
    report['label'] = {'kind': 'binary per emotion (one-hot, index 1 = present)'}
    if source.format == formats.MULT:
      notes.append('audio/visual: plain means over all stored steps, zero padding included, as '
                   'the 2018 file\'s vectors were made from the aligned 20 steps')
  else:
    regression = formats.load_regression(source)
    notes.extend(regression.notes)
    sizes = [split.n for split in regression.splits.values()]
    splits = {}
    for name, split in regression.splits.items():
      splits[name] = {'n': split.n, 'audio': _array_info(split.audio),
                      'visual': _array_info(split.visual), 'text': _array_info(split.text),
                      'label': _array_info(split.label),
                      'label_range': [float(split.label.min()), float(split.label.max())],
                      'replaced': {'audio': dataclasses.asdict(split.audio_replaced),
                                   'visual': dataclasses.asdict(split.visual_replaced)},
                      'text_nonfinite': split.text_nonfinite}
    report['splits'] = splits
    report['label'] = {'kind': 'float regression', 'columns': int(
        next(iter(regression.splits.values())).label.shape[1])}
  size_note = formats.split_size_note(source.dataset, sizes) if len(sizes) == 3 else None
  report['paper_splits'] = list(formats.PAPER_SPLITS.get(source.dataset, ())) or None
  checksum = formats.checksum_note(source) if source.format == formats.MMSA else None
  report['notes'] = notes + [n for n in (size_note, checksum) if n]
  return report


def _print_inspect(report):
  note = ' (synthetic)' if report['synthetic'] else ''
  print(f'{report["path"]}{note}: {report["format"]} format, {report["dataset"]}: {report["task"]}')
  if report['paper_splits']:
    print(f'  paper splits: {"/".join(map(str, report["paper_splits"]))}')
  if 'emotions' in report:
    _print_info(report['emotions'])
  else:
    for name, row in report['splits'].items():
      low, high = row['label_range']
      replaced = row['replaced']
      print(f'  {name:5s}  n={row["n"]:5d}  audio={tuple(row["audio"]["shape"][1:])}  '
            f'visual={tuple(row["visual"]["shape"][1:])}  text={tuple(row["text"]["shape"][1:])}  '
            f'labels={tuple(row["label"]["shape"][1:])} in [{low:.3g}, {high:.3g}]  '
            f'non-finite zeroed: audio {replaced["audio"]["nan"]} NaN {replaced["audio"]["inf"]} '
            f'inf, visual {replaced["visual"]["nan"]} NaN {replaced["visual"]["inf"]} inf; '
            f'text {row["text_nonfinite"]}')
  for line in report['notes']:
    print(f'  note: {line}')


def _print_info(reports):
  for report in reports:
    note = ' (synthetic)' if report['synthetic'] else ''
    print(f'{report["emotion"]}: {report["path"]}{note}')
    for split, row in report['splits'].items():
      print(f'  {split:5s}  n={row["n"]:5d}  audio={row["audio_dim"]}  visual={row["visual_dim"]}  '
            f'text={tuple(row["text_shape"])}  positive={100 * row["positive_rate"]:.1f}%  '
            f'{row["replaced_text"]}')


def convert(path, out=None, overwrite=False):
  """Writes the pickle's npz copy (validated first, as `load` validates); returns its path."""
  source = path
  if os.path.isdir(source):
    source = os.path.join(source, data_lib.PICKLE_NAME)
  source = data_lib.resolve_path(source)
  if source.endswith('.npz'):
    raise data_lib.DataError(f'{source} is already an npz: pass the pickle')
  out = out or os.path.join(os.path.dirname(os.path.abspath(source)), data_lib.NPZ_NAME)
  if not out.endswith('.npz'):
    raise data_lib.DataError(f'--out {out} must end in .npz')
  marker = synthetic.describe(source)  # a damaged marker stops here, before anything is written
  data_lib.write_npz(data_lib.read_raw(source), out, source, overwrite)
  try:
    if marker is None:
      synthetic.unmark(out)  # a marker of an earlier synthetic npz there would describe this one
    else:
      synthetic.mark(out, marker)
  except OSError as e:
    raise data_lib.DataError(f'wrote {out} but could not update its synthetic-data marker '
                             f'({e.strerror or e}): delete {out} and convert again') from None
  return out


def _sizes(text):
  try:
    sizes = tuple(int(x) for x in text.split(','))
  except ValueError:
    sizes = ()
  if len(sizes) != 3 or min(sizes) < 2:
    raise argparse.ArgumentTypeError(
        f'{text!r}: give three sample counts of at least 2, e.g. 2717,798,938')
  return sizes


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m iemocap', description=__doc__)
  commands = parser.add_subparsers(dest='command', required=True)
  for name, summary in (('inspect', 'detect and describe a data file'),
                        ('info', 'inspect\'s older name (its JSON: per-emotion records)')):
    p_info = commands.add_parser(name, help=summary)
    p_info.add_argument('path', help='a data file (iemocap.pkl/.npz, MulT or MMSA .pkl), a '
                        'directory holding one or the .csd files, or a comma-separated .csd list')
    p_info.add_argument('--emotion', help='IEMOCAP: one emotion (default: all in the file)')
    p_info.add_argument('--json', action='store_true', help='print JSON')
  p_synth = commands.add_parser('synth', help='write a synthetic data file')
  p_synth.add_argument('--out', required=True, help='directory to write the file into')
  p_synth.add_argument('--format', default='lmf2018',
                       choices=('lmf2018',) + synthetic_formats.FORMATS,
                       help='lmf2018: iemocap.pkl of the 2018 code (default); the others: '
                       'stand-ins for the MulT, MMSA and CMU-SDK files, by their release names')
  p_synth.add_argument('--seed', type=int, default=synthetic.DEFAULT_SEED)
  p_synth.add_argument('--sizes', type=_sizes, default=None,
                       help='train,valid,test sample counts (default: the CMU split 2717,798,938 '
                       f'for lmf2018, {",".join(map(str, synthetic_formats.DEFAULT_SIZES))} '
                       'for the others)')
  p_synth.add_argument('--overwrite', action='store_true',
                       help='replace an existing DIR/iemocap.pkl (refused otherwise)')
  p_convert = commands.add_parser('convert', help='convert iemocap.pkl to a safe, fast iemocap.npz')
  p_convert.add_argument('path', help='iemocap.pkl or the directory holding it')
  p_convert.add_argument('--out', help='output .npz (default: iemocap.npz beside the input)')
  p_convert.add_argument('--overwrite', action='store_true',
                         help='replace an existing output .npz (refused otherwise)')
  args = parser.parse_args(argv)
  try:
    if args.command in ('inspect', 'info'):
      report = inspect(args.path, args.emotion)
      if args.json and args.command == 'info' and 'emotions' in report:
        reports = report['emotions']
        print(json.dumps(reports[0] if args.emotion else reports, indent=2))
      elif args.json:
        print(json.dumps(report, indent=2))
      else:
        _print_inspect(report)
    elif args.command == 'synth':
      if args.format == 'lmf2018':
        sizes = args.sizes or synthetic.DEFAULT_SIZES
        path = synthetic.write(args.out, args.seed, sizes, args.overwrite)
      else:
        sizes = args.sizes or synthetic_formats.DEFAULT_SIZES
        path = synthetic_formats.write(args.format, args.out, args.seed, sizes, args.overwrite)
      print(f'wrote {path} (synthetic, seed {args.seed}, sizes {",".join(map(str, sizes))})')
    else:
      print(f'wrote {convert(args.path, args.out, args.overwrite)}')
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
