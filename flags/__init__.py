"""What both trainers share about a run: flags, presets, the Config, the Adam group rule
and the 2018 state_dict schema. Importing `flags.definitions` registers the absl flags."""
