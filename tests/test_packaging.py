"""The package as users install it (`pip install .`, not editable): the wheel carries the
gin files, and an installed sbs_jax finds and parses them away from any source checkout."""

import os
import pathlib
import subprocess
import sys
import zipfile
from tests.helpers import REPO



def test_an_installed_package_ships_and_finds_its_gin_files(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(tmp_path / "dist"), str(REPO)], check=True, timeout=300,
                 capture_output=True, cwd=tmp_path)
  wheel, = (tmp_path / "dist").glob("sbs_jax-*.whl")
  shipped = {n[len("sbs_jax/gin_configs/"):] for n in zipfile.ZipFile(wheel).namelist()
             if n.startswith("sbs_jax/gin_configs/")}
  source = {str(p.relative_to(REPO / "gin_configs")) for p in (REPO / "gin_configs").rglob("*")
            if p.is_file()}
  assert shipped == source and "experiments/cqa_distill_llm.gin" in shipped
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                  str(site), str(wheel)], check=True, timeout=300, capture_output=True)
  elsewhere = tmp_path / "elsewhere"  # no gin_configs/ here or above it
  elsewhere.mkdir()
  code = ("import sbs_jax; from sbs_jax.train import gin_setup; "
          "print(sbs_jax.__file__); print(gin_setup.GIN_DIR); "
          "gin_setup.parse_gin(['experiments/svamp_distill_llm.gin', 'models/small.gin'], "
          "[\"MODEL_DIR = '/tmp/m'\"]); "
          "from sbs_jax.train import config, gin_check; "
          "print(gin_check.configured(config.TrainConfig).train_steps)")
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, text=True,
                       capture_output=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  module, gin_dir, steps = out.stdout.split("\n")[:3]
  assert pathlib.Path(module).is_relative_to(site)
  assert pathlib.Path(gin_dir) == site / "sbs_jax" / "gin_configs"
  assert int(steps) > 0
