"""The configuration both trainers share: flag definitions, presets and the frozen Config.
Importing any module here defines no flag; command lines call the define_* functions."""
