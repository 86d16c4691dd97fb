"""Sizing and timing jobs rather than running them: `sbs plan` (per-device memory, and the
TPU compiler's figures for a slice), `sbs bench` (throughput, FLOPs, MFU, beside the HF
reference), FLOP counting and HLO statistics. Above `train/` in the import order; nothing in
the training path imports it. Kept import-light: `launch/tpu.py` imports `tpu_slices`."""
