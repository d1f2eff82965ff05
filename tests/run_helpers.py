"""What the trainer tests of both backends share: a small configuration and result fields."""

from flags.config import Config

# A model small enough to train in seconds on the small synthetic set, every part present.
SMALL = dict(audio_hidden=8, video_hidden=4, text_hidden=16, audio_dropout=0.2, video_dropout=0.1,
             text_dropout=0.1, factor_lr=0.003, lr=0.003, rank=4, batch_size=32,
             weight_decay=0.002)
# results.json fields that must not change between identical runs (timings do).
DETERMINISTIC_KEYS = ('f1', 'accuracy', 'test_loss', 'best_valid_loss', 'best_epoch',
                      'epochs_run', 'stopped_by', 'majority_f1', 'majority_accuracy')


def small_config(data_dir, workdir, **overrides):
  values = dict(emotion='sad', data_path=data_dir, workdir=str(workdir), epochs=4, patience=3,
                seed=1, **SMALL)
  values.update(overrides)
  return Config(**values)


def read_bytes(path):
  with open(path, 'rb') as f:
    return f.read()
