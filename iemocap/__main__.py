"""`python -m iemocap {info,synth,convert}`: inspect, generate or convert IEMOCAP data files."""

import argparse
import dataclasses
import json
import os
import sys

from iemocap import data as data_lib
from iemocap import synthetic
from iemocap.errors import UserError


def split_info(split):
  return {'n': split.n, 'audio_dim': int(split.audio.shape[1]),
          'visual_dim': int(split.visual.shape[1]), 'text_shape': list(split.text.shape[1:]),
          'positive_rate': round(split.positive_rate, 4),
          'nonfinite_replaced': split.nonfinite_replaced,
          'replaced': {key: dataclasses.asdict(counts) for key, counts in
                       (('covarep', split.audio_replaced), ('facet', split.visual_replaced))},
          'replaced_text': split.replaced_text()}


def info(path, emotion=None):
  """Per emotion and split: N, dimensions, positive rate, non-finite values replaced."""
  path = data_lib.resolve_path(path)
  raw = data_lib.read_raw(path)
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
  p_info = commands.add_parser('info', help='summarise a data file')
  p_info.add_argument('path', help='iemocap.pkl, iemocap.npz or a directory holding one')
  p_info.add_argument('--emotion', help='one emotion (default: all in the file)')
  p_info.add_argument('--json', action='store_true',
                      help='print JSON: one record with --emotion, else a list of records')
  p_synth = commands.add_parser('synth', help='write a synthetic iemocap.pkl')
  p_synth.add_argument('--out', required=True, help='directory to write iemocap.pkl into')
  p_synth.add_argument('--seed', type=int, default=synthetic.DEFAULT_SEED)
  p_synth.add_argument('--sizes', type=_sizes, default=synthetic.DEFAULT_SIZES,
                       help='train,valid,test sample counts (default: the CMU split 2717,798,938)')
  p_synth.add_argument('--overwrite', action='store_true',
                       help='replace an existing DIR/iemocap.pkl (refused otherwise)')
  p_convert = commands.add_parser('convert', help='convert iemocap.pkl to a safe, fast iemocap.npz')
  p_convert.add_argument('path', help='iemocap.pkl or the directory holding it')
  p_convert.add_argument('--out', help='output .npz (default: iemocap.npz beside the input)')
  p_convert.add_argument('--overwrite', action='store_true',
                         help='replace an existing output .npz (refused otherwise)')
  args = parser.parse_args(argv)
  try:
    if args.command == 'info':
      reports = info(args.path, args.emotion)
      if args.json:
        print(json.dumps(reports[0] if args.emotion else reports, indent=2))
      else:
        _print_info(reports)
    elif args.command == 'synth':
      path = synthetic.write(args.out, args.seed, args.sizes, args.overwrite)
      print(f'wrote {path} (synthetic, seed {args.seed}, sizes {",".join(map(str, args.sizes))})')
    else:
      print(f'wrote {convert(args.path, args.out, args.overwrite)}')
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
