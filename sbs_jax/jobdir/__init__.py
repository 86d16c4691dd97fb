"""Job directories: the mechanisms every resumable command shares.

A job dir (an annotation shard's work folder, `sbs predict`'s partial output, a model dir, a
sweep dir) is written by one process at a time, survives a kill at any point, and refuses
to be continued with other settings. The pieces, each in one place:

- `files`: whole-or-nothing writes (a temporary file beside the target, renamed over it;
  local paths and gs:// alike), the cleanup of temporaries a killed process left, sha256 of
  a file.
- `manifest`: what differs between the settings a dir pinned and the ones asked for now,
  in the forms the commands print when they refuse.
- `locks`: one process per dir (an fcntl lock locally; a heartbeat lease object on gs://).
- `progress`: a bar on a terminal, a log line every 10% elsewhere, with rate and ETA.

The typed directories built on them (what lives in a model dir, an annotation dir, a sweep
dir) are in `sbs_jax.dirs`. This package imports nothing else of sbs_jax but its errors.
"""
