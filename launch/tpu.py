"""Cloud TPU launcher: make a TPU VM or pod slice, install sbs_jax on every worker, train.

    python launch/tpu.py create --name sbs --zone us-central2-b --accelerator_type v4-64 --spot \
        [--check_fit --gin_file=experiments/cqa_distill_llm.gin --gin.KEY=VALUE ...]
    python launch/tpu.py setup  --name sbs [--repo_url URL [--ref origin/main]] [--with_t5x]
    python launch/tpu.py train  --name sbs --gin_file=experiments/cqa_distill_llm.gin \
        --gin.MODEL_DIR="'gs://bucket/runs/cqa'" [--gin.KEY=VALUE ...] [--check_fit]
    python launch/tpu.py t5x    --name sbs --family distill_llm --size base \
        --gin.MIXTURE_OR_TASK_NAME="'sbs_cqa_distill_llm'" --gin.MODEL_DIR="'gs://...'"
    python launch/tpu.py logs   --name sbs [--worker 3] [--follow | --fetch DIR]
    python launch/tpu.py run    --name sbs [--worker 0] [--cpu] -- sbs_venv/bin/sbs ...
    python launch/tpu.py resume --name sbs     # the last train/t5x command again
    python launch/tpu.py delete --name sbs

Zone, project and accelerator type are remembered per VM name in
`<state_dir>/<name>.json` (default ~/.sbs_launch), with the last training command,
which `resume` runs again: the trainer then continues from the model dir's last
checkpoint. Training runs on all workers at once under nohup (an ssh disconnect does not
stop it), each worker logging to its own ~/sbs_logs/<job>.log.

Safety: every local command is an argv list run without a shell. The one string that a
worker's shell reads (ssh --command) is built from argv lists with shlex.quote, so no
argument (a gin binding, a path with spaces, quotes, `$(...)`, backticks or `;`) can leave
its quotes. `--dry_run` prints each command on one line, ready to paste, and runs nothing.
Only the Python standard library is used: the launcher runs anywhere gcloud does.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCAL_SBS = REPO / ".venv" / "bin" / "sbs"  # for --check_fit, with the tpu extra
# What `pip -e` needs, and launch/ for install_t5x.sh.
COPIED = ("setup.py", "README.md", "sbs_jax", "tasks", "gin_configs", "launch")
LOG_DIR = "sbs_logs"  # on each worker, under the home directory
T5X_FAMILIES = ("distill_llm", "distill_gt", "standard_gt", "standard_llm")
T5X_SIZES = ("small", "base", "large", "xl", "xxl")
MODEL_DIR_KEYS = ("MODEL_DIR", "TrainConfig.model_dir")
# Cloud TPU's recommended software versions for JAX, by TPU generation.
RUNTIMES = {"v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5e": "v2-alpha-tpuv5-lite"}
DEFAULT_RUNTIME = "tpu-ubuntu2204-base"  # v4 and older

_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REMOTE_PATH = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./-]*")
_PYTHON = re.compile(r"python3\.[0-9]+")
# LIBTPU_INIT_ARGS: space-separated --flag or --flag=value
_LIBTPU_FLAG = r"--[A-Za-z0-9_]+(=[A-Za-z0-9_.,:+-]*)?"
_LIBTPU_ARGS = re.compile(rf"{_LIBTPU_FLAG}( {_LIBTPU_FLAG})*")


class LaunchError(Exception):
  """A problem with the request, reported as one line."""


def _slices_module():
  """`sbs_jax.perf.tpu_slices` (what `sbs plan` knows of slices), from the installed
  package or this checkout; None where neither imports (the launcher copied alone): then
  only the name's form is checked. tpu_slices needs the standard library only."""
  try:
    from sbs_jax.perf import tpu_slices  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.path.insert(0, str(REPO))
    try:
      from sbs_jax.perf import tpu_slices  # pylint: disable=import-outside-toplevel
    except ImportError:
      return None
    finally:
      sys.path.remove(str(REPO))
  return tpu_slices


# Older generations the launcher can create but `sbs plan` does not model: TensorCores.
_OLD_SLICES = {"v2": (8, 512), "v3": (8, 2048)}


def check_accelerator_type(value: str | None) -> None:
  """Refuses an accelerator type that is no Cloud TPU slice (v4-7), in one line: the
  generations and sizes of `sbs plan` (sbs_jax/perf/tpu_slices.py), and also the larger
  slices without a default shape that Cloud TPU makes of whole 4-chip hosts (v4-1536)."""
  if value is None:
    return
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", value)
  if m and m.group(1) in _OLD_SLICES:
    low, high = _OLD_SLICES[m.group(1)]
    cores = int(m.group(2))
    if not (low <= cores <= high and cores & (cores - 1) == 0):
      raise LaunchError(f"--accelerator_type {value}: not a Cloud TPU slice "
                        f"({m.group(1)}-{low} ... {m.group(1)}-{high}, powers of two)")
    return
  slices = _slices_module()
  if slices is None:  # no package here: the form only
    if not m:
      raise LaunchError(f"--accelerator_type {value}: not an accelerator type such as v4-8")
    return
  known = ", ".join(f"{name}-{g.min_chips * g.cores_per_chip} ... "
                    f"{name}-{g.max_chips * g.cores_per_chip}"
                    for name, g in slices.GENERATIONS.items())
  generation = slices.ALIASES.get(m.group(1), m.group(1)) if m else None
  if generation not in slices.GENERATIONS:
    raise LaunchError(f"--accelerator_type {value}: unknown TPU accelerator type; known: "
                      f"{known} (v5e also as v5litepod-N), v2-8 ..., v3-8 ...")
  try:
    slices.parse(value)
    return
  except slices.SbsError:
    spec = slices.GENERATIONS[generation]
    chips, rest = divmod(int(m.group(2)), spec.cores_per_chip)
    if not rest and spec.min_chips <= chips <= spec.max_chips and chips % 4 == 0:
      return  # whole hosts of 4 chips: a slice of a custom shape
  counts = ("TensorCores, 2 per chip" if slices.GENERATIONS[generation].cores_per_chip == 2
            else "chips")
  raise LaunchError(f"--accelerator_type {value}: not a Cloud TPU slice of {generation} "
                    f"({known}; the number counts {counts})")


def _matching(pattern: re.Pattern, what: str):
  def check(value: str) -> str:
    if not pattern.fullmatch(value) or ".." in value.split("/"):
      raise argparse.ArgumentTypeError(f"{value!r} is not a valid {what}")
    return value
  return check


def hosts_of(accelerator_type: str | None) -> int | None:
  """Worker VMs of a slice (v4-8: 1, v4-64: 8, v5litepod-16: 4); None if unknown."""
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type or "")
  if not m:
    return None
  family, n = m.group(1), int(m.group(2))
  if family in ("v2", "v3", "v4", "v5p"):  # the number counts TensorCores, 8 per host
    return max(1, n // 8)
  if family in ("v5litepod", "v5e", "v6e"):  # the number counts chips: 8 on one host, else 4
    return 1 if n <= 8 else n // 4
  return None


# ---- State: zone, project, accelerator type and the last training command, per VM.

def _state_path(args) -> pathlib.Path:
  return pathlib.Path(os.path.expanduser(args.state_dir)) / f"{args.name}.json"


def load_state(args) -> dict:
  path = _state_path(args)
  return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save_state(args, **fields) -> None:
  """Merges `fields` into the VM's state file (never in a dry run)."""
  if args.dry_run:
    return
  state = {**load_state(args), "name": args.name, **fields}
  path = _state_path(args)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
  tmp.replace(path)


def resolve(args, state: dict) -> None:
  """Fills zone, project and accelerator type from the state where not given."""
  for key in ("zone", "project", "accelerator_type"):
    if getattr(args, key, None) is None:
      setattr(args, key, state.get(key))
  if not args.zone:
    raise LaunchError(f"no --zone given and none recorded for {args.name!r}")


# ---- gcloud commands (argument lists, without the gcloud binary itself).

def _tpu_vm(verb: str, args, *rest: str) -> list[str]:
  project = [f"--project={args.project}"] if args.project else []
  return ["compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}", *project]


def ssh(args, remote_command: str, worker: str = "all") -> list[str]:
  """One shell command run on the workers (in parallel with --worker=all)."""
  return _tpu_vm("ssh", args, args.name, f"--worker={worker}", f"--command={remote_command}")


def local_path(path: str) -> str:
  """A local path for scp, which would take one with ':' for a remote one."""
  if ":" in path:
    raise LaunchError(f"scp cannot copy a local path with ':' in it: {path!r}")
  return path


def scp(args, sources: list[str], dest: str, worker: str = "all",
        recurse: bool = False) -> list[str]:
  """Copies files to (or from) the workers; remote paths are written NAME:PATH."""
  return _tpu_vm("scp", args, *(["--recurse"] if recurse else []), *sources, dest,
                 f"--worker={worker}")


def in_background(argv: list[str], job: str) -> str:
  """A shell command starting argv under nohup, its output appended to ~/sbs_logs/<job>.log."""
  log, pid = f"{LOG_DIR}/{job}.log", f"{LOG_DIR}/{job}.pid"
  return (f"mkdir -p {LOG_DIR} && ( nohup {shlex.join(argv)} >> {log} 2>&1 < /dev/null & "
          f"echo $! > {pid} ) && echo \"started on $(hostname): ~/{log}\"")


def venv_python(args) -> str:
  return f"{args.venv}/bin/python"


def model_dir_of(bindings: list[str]) -> str | None:
  """The model dir a list of --gin.KEY=VALUE bindings sets (the last one wins)."""
  found = None
  for arg in bindings:
    key, _, value = arg[len("--gin."):].partition("=")
    if key.strip() in MODEL_DIR_KEYS:
      found = value.strip().strip("'\"")
  return found


def check_bindings(args, bindings: list[str]) -> None:
  """Gin bindings only; on a multi-host slice the model dir must be shared (gs://)."""
  for arg in bindings:
    if not arg.startswith("--gin.") or "=" not in arg:
      raise LaunchError(f"unrecognised argument {arg!r} (bindings look like --gin.KEY=VALUE)")
  hosts = hosts_of(args.accelerator_type)
  model_dir = model_dir_of(bindings)
  if hosts and hosts > 1 and not (model_dir or "").startswith("gs://"):
    raise LaunchError(
        f"{args.accelerator_type} has {hosts} workers, each with its own disk: give a "
        f"shared model dir, e.g. --gin.MODEL_DIR=\"'gs://BUCKET/runs/NAME'\" "
        f"(got {model_dir!r})")


# ---- Subcommands: each returns the gcloud commands to run, in order.

def create_commands(args) -> list[list[str]]:
  version = args.runtime_version or RUNTIMES.get(args.accelerator_type.split("-")[0],
                                                  DEFAULT_RUNTIME)
  flags = [f"--accelerator-type={args.accelerator_type}", f"--version={version}"]
  flags += ["--spot"] if args.spot else ["--preemptible"] if args.preemptible else []
  return [_tpu_vm("create", args, args.name, *flags)]


def setup_commands(args) -> list[list[str]]:
  """Get the code onto every worker, then a venv with the package, t5x and jax[tpu]."""
  q, repo, py = shlex.quote, args.remote_dir, venv_python(args)
  commands = []
  if args.repo_url:
    fetch = (f"( test -d {q(repo + '/.git')} || git clone -- {q(args.repo_url)} {q(repo)} ) "
             f"&& git -C {q(repo)} fetch --quiet origin "
             f"&& git -C {q(repo)} checkout --quiet --detach {q(args.ref)}")
    commands.append(ssh(args, fetch))
  else:
    src = pathlib.Path(args.src).resolve()
    missing = [p for p in COPIED if not (src / p).exists()]
    if missing:
      raise LaunchError(f"{src} is not an sbs_jax checkout: no {', '.join(missing)}")
    commands.append(ssh(args, f"mkdir -p {q(repo)}"))
    commands.append(scp(args, [local_path(str(src / p)) for p in COPIED],
                        f"{args.name}:{repo}", recurse=True))
  steps = ["sudo apt-get update -qq",
           f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {args.base_python} "
           f"{args.base_python}-venv",
           f"( test -x {q(py)} || {args.base_python} -m venv {q(args.venv)} )",
           f"{q(py)} -m pip install --quiet --upgrade pip",
           f"{q(py)} -m pip install --quiet -e {q(repo)}"]
  if args.with_t5x:  # T5X, airio, jestimator at the pinned commits, into the venv
    steps.append(f"VENV={q(args.venv)} bash {q(repo + '/launch/install_t5x.sh')}")
  steps.append(f"{q(py)} -m pip install --quiet --upgrade {q(args.jax_spec)}")
  commands.append(ssh(args, " && ".join(steps)))
  return commands


def train_argv(args, bindings: list[str]) -> list[str]:
  """What each worker runs for `train`: our trainer, joining the slice's JAX cluster.

  --multihost (jax.distributed.initialize()) unless the slice is known to be one host.
  """
  multihost = [] if hosts_of(args.accelerator_type) == 1 else ["--multihost"]
  return [*libtpu_env(args), venv_python(args), "-m", "sbs_jax.cli", "train", *multihost,
          *[f"--gin_file={f}" for f in args.gin_file], *bindings]


def libtpu_env(args) -> list[str]:
  """`env LIBTPU_INIT_ARGS=...` for the workers, when --libtpu_init_args is given."""
  return ["env", f"LIBTPU_INIT_ARGS={args.libtpu_init_args}"] if args.libtpu_init_args else []


def t5x_source(args) -> str:
  """Where launch/install_t5x.sh keeps T5X's sources (its gin files), relative to ~."""
  return f"{args.venv}/src/t5x"


def t5x_argv(args, bindings: list[str]) -> list[str]:
  """What each worker runs for `t5x`: T5X's trainer on our mixtures (run from ~)."""
  gin_files = [f"t5x/examples/t5/t5_1_1/{args.size}.gin", args.run_gin,
               f"gin_configs/t5x/{args.family}.gin", *args.gin_file]
  return [*(libtpu_env(args) or ["env"]), f"PYTHONPATH={args.remote_dir}", venv_python(args),
          "-m", "t5x.train",
          f"--gin_search_paths=.,{t5x_source(args)},{args.remote_dir}",
          *[f"--gin_file={f}" for f in gin_files], *bindings]


def check_fit_argv(args, bindings: list[str]) -> list[str]:
  """`sbs plan --topology`, run here: the TPU compiler's per-chip memory of the run."""
  if not args.accelerator_type:
    raise LaunchError("--check_fit needs the accelerator type (give --accelerator_type)")
  return [args.sbs, "plan", "--topology", args.accelerator_type,
          *[f"--gin_file={f}" for f in args.gin_file], *bindings]


def check_fit(args, bindings: list[str], out) -> None:
  """Compiles the run for the slice on this machine; refuses it when it does not fit."""
  argv = check_fit_argv(args, bindings)
  # The compile here gets the run's libtpu flags and no others: they change what the
  # compiled step holds (docs/scale.md, "Remat with 2-D rules").
  env = {k: v for k, v in os.environ.items() if k != "LIBTPU_INIT_ARGS"}
  shown = shlex.join(argv)
  if args.libtpu_init_args:
    env["LIBTPU_INIT_ARGS"] = args.libtpu_init_args
    shown = f"LIBTPU_INIT_ARGS={shlex.quote(args.libtpu_init_args)} {shown}"
  if args.dry_run:
    print(shown, file=out)
    return
  print(f"+ {shown}", file=sys.stderr, flush=True)
  try:
    proc = subprocess.run(argv, check=False, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env)
  except FileNotFoundError:
    raise LaunchError(f"{args.sbs!r} not found: give --sbs (the sbs of a local venv with "
                      "the tpu extra)") from None
  sys.stderr.write(proc.stderr)
  if proc.returncode:
    last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
    raise LaunchError(f"--check_fit: the run does not compile to fit "
                      f"{args.accelerator_type}; nothing was started: {last}")


def train_commands(args, bindings: list[str]) -> list[list[str]]:
  check_bindings(args, bindings)
  argv = (t5x_argv if args.command == "t5x" else train_argv)(args, bindings)
  return [ssh(args, in_background(argv, args.command))]


def logs_commands(args, state: dict) -> list[list[str]]:
  log = f"{LOG_DIR}/{args.job or state.get('job', 'train')}.log"
  if args.fetch is None:
    follow = ["-F"] if args.follow else []
    return [ssh(args, shlex.join(["tail", "-n", str(args.lines), *follow, log]),
                worker=args.worker)]
  if args.worker == "all":
    hosts = hosts_of(args.accelerator_type)
    if hosts is None:
      raise LaunchError("--worker all needs the accelerator type (give --accelerator_type)")
    workers = [str(i) for i in range(hosts)]
  else:
    workers = [args.worker]
  out = pathlib.Path(args.fetch)
  return [scp(args, [f"{args.name}:{log}"],
              local_path(str(out / f"{args.name}-worker{w}.log")), w) for w in workers]


def run_commands(args) -> list[list[str]]:
  """Any command, in the foreground, from ~ on the chosen worker(s); --cpu hides the TPU."""
  argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
  if not argv:
    raise LaunchError("nothing to run: give the command after --")
  env = ["env", "JAX_PLATFORMS=cpu"] if args.cpu else []
  return [ssh(args, shlex.join([*env, *argv]), worker=args.worker)]


def delete_commands(args) -> list[list[str]]:
  return [_tpu_vm("delete", args, args.name, "--quiet")]


# ---- Command line.

def build_parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  common.add_argument("--name", required=True, type=_matching(_NAME, "TPU name"))
  common.add_argument("--zone", type=_matching(_TOKEN, "zone"), help="default: recorded")
  common.add_argument("--project", type=_matching(_TOKEN, "project"))
  common.add_argument("--dry_run", action="store_true", help="print the commands, run none")
  common.add_argument("--state_dir", default=os.environ.get("SBS_LAUNCH_STATE",
                                                            "~/.sbs_launch"))
  common.add_argument("--gcloud", default="gcloud", help="the gcloud binary")
  remote = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  path = _matching(_REMOTE_PATH, "remote path")
  remote.add_argument("--remote_dir", default="sbs_jax", type=path,
                      help="the checkout on each worker, relative to ~")
  remote.add_argument("--venv", default="sbs_venv", type=path, help="relative to ~")
  accel = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  accel.add_argument("--accelerator_type", type=_matching(_TOKEN, "accelerator type"),
                     help="e.g. v4-8, v4-64 (default: recorded by create)")

  fit = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  fit.add_argument("--gin_file", action="append", default=[])
  fit.add_argument("--check_fit", action="store_true",
                   help="first compile the run (gin files and bindings) for the slice here "
                   "(sbs plan --topology, minutes on a laptop); stop if it does not fit")
  fit.add_argument("--sbs", default=str(LOCAL_SBS) if LOCAL_SBS.exists() else "sbs",
                   help="the local sbs for --check_fit (default: this checkout's .venv)")
  libtpu = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  libtpu.add_argument("--libtpu_init_args", type=_matching(_LIBTPU_ARGS, "LIBTPU_INIT_ARGS"),
                      help="libtpu compiler flags for the run (LIBTPU_INIT_ARGS on every "
                      "worker) and for --check_fit's compile, which otherwise gets none, e.g. "
                      "--libtpu_init_args="
                      "--xla_tpu_choose_faster_windowed_einsum_over_mem=false")

  parser = argparse.ArgumentParser(prog="launch/tpu.py", allow_abbrev=False,
                                   description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)

  def add(name, **kwargs):
    return sub.add_parser(name, allow_abbrev=False, **kwargs)

  p = add("create", parents=[common, fit, libtpu], help="create a TPU VM or pod slice")
  p.add_argument("--accelerator_type", required=True, type=_matching(_TOKEN, "type"))
  p.add_argument("--runtime_version", type=_matching(_TOKEN, "runtime version"),
                 help=f"default: {DEFAULT_RUNTIME} (v4 and older), or v5e/v5p/v6e's own")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--spot", action="store_true")
  g.add_argument("--preemptible", action="store_true")
  p = add("setup", parents=[common, remote], help="install on every worker")
  p.add_argument("--src", default=str(REPO), help="local checkout to copy (default: this)")
  p.add_argument("--repo_url", help="git clone this on the workers instead of copying")
  p.add_argument("--ref", default="origin/HEAD", help="with --repo_url: what to check out")
  p.add_argument("--with_t5x", action="store_true",
                 help="also install T5X (launch/install_t5x.sh: pinned commits from GitHub)")
  p.add_argument("--base_python", default="python3.11", type=_matching(_PYTHON, "python"))
  p.add_argument("--jax_spec", default="jax[tpu]", help="pip requirement for JAX on TPU")
  p = add("train", parents=[common, remote, accel, fit, libtpu],
          help="sbs train --multihost on all workers (+ --gin.KEY=VALUE ...)")
  p = add("t5x", parents=[common, remote, accel, libtpu],
          help="T5X's trainer on our mixtures (+ --gin.KEY=VALUE ...)")
  p.add_argument("--family", choices=T5X_FAMILIES, default="distill_llm")
  p.add_argument("--size", choices=T5X_SIZES, default="base", help="T5 v1.1 size")
  p.add_argument("--run_gin", default="t5x/configs/runs/finetune.gin")
  p.add_argument("--gin_file", action="append", default=[], help="more gin files, last")
  worker = _matching(re.compile(r"all|[0-9]+"), "worker")
  p = add("logs", parents=[common, accel], help="show or fetch worker logs")
  p.add_argument("--worker", default="0", type=worker)
  p.add_argument("--job", choices=("train", "t5x"), help="default: the last one started")
  p.add_argument("--lines", type=int, default=100)
  p.add_argument("--follow", action="store_true")
  p.add_argument("--fetch", metavar="DIR", help="copy the log(s) into DIR")
  p = add("run", parents=[common], help="run a command on worker(s): -- ARGV")
  p.add_argument("--worker", default="0", type=worker)
  p.add_argument("--cpu", action="store_true", help="JAX_PLATFORMS=cpu (e.g. import-hf)")
  p.add_argument("argv", nargs=argparse.REMAINDER)
  add("resume", parents=[common], help="rerun the last train/t5x command")
  add("delete", parents=[common], help="delete the TPU VM (state is kept)")
  return parser


def run(args, commands: list[list[str]], out=None) -> int:
  """Prints (dry run) or runs each gcloud command; stops at the first failure."""
  out = out or sys.stdout
  for command in commands:
    argv = [args.gcloud, *command]
    if args.dry_run:
      print(shlex.join(argv), file=out)
      continue
    print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
    try:
      code = subprocess.run(argv, check=False).returncode
    except FileNotFoundError:
      raise LaunchError(f"{args.gcloud!r} not found: install the Google Cloud CLI") from None
    if code:
      print(f"launch/tpu.py {args.command}: command failed with exit code {code}",
            file=sys.stderr)
      return code
  return 0


def main(argv: list[str] | None = None, out=None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  takes_bindings = ("train", "t5x") + (("create",) if getattr(args, "check_fit", False) else ())
  if extra and args.command not in takes_bindings:
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  try:
    state = load_state(args)
    if args.command == "resume":
      if "command" not in state:
        raise LaunchError(f"nothing recorded for {args.name!r} in {_state_path(args)}")
      return run(args, [state["command"]], out)
    resolve(args, state)
    check_accelerator_type(getattr(args, "accelerator_type", None))
    if args.command == "create":
      if args.check_fit:  # sbs plan refuses anything that is not a --gin. binding
        check_fit(args, extra, out or sys.stdout)
      code = run(args, create_commands(args), out)
      if not code:
        save_state(args, zone=args.zone, project=args.project,
                   accelerator_type=args.accelerator_type)
      return code
    if args.command in ("train", "t5x"):
      commands = train_commands(args, extra)
      if getattr(args, "check_fit", False):
        check_fit(args, extra, out or sys.stdout)
      code = run(args, commands, out)
      if not code:
        save_state(args, zone=args.zone, project=args.project,
                   accelerator_type=args.accelerator_type, job=args.command,
                   command=commands[0])
      return code
    build = {"setup": setup_commands, "logs": lambda a: logs_commands(a, state),
             "run": run_commands, "delete": delete_commands}[args.command]
    return run(args, build(args), out)
  except LaunchError as e:
    print(f"launch/tpu.py {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
