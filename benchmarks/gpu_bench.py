"""Reward AND policy benchmark figures on one card, in one call on a lent GPU machine.

The lent machine (see docs/policy.md, "On a GPU") has PyTorch, transformers, peft and accelerate
but no network, no TRL / datasets / vaderSentiment and none of the embedded model weights, and a
call carries at most 64 MiB. So the work is split in two:

  1. here, with network:  python benchmarks/gpu_bench.py prepare
     writes .cache/gpu_bench/ (git-ignored, ~10 MB): the config.json and tokenizer files of
     smollm2-135m and minilm-l6 (no weights: 517 MB and 90 MB do not fit a call) and the wheels of
     the pure-Python packages the box lacks (trl, datasets, dill, multiprocess, vaderSentiment),
     at the versions installed here.
  2. on the GPU machine:  python3 benchmarks/gpu_bench.py run --random-init
     (carry: .cache/gpu_bench). Installs the carried wheels into /tmp (no network) for whichever
     of those packages is missing, builds randomly initialised models of the same architectures
     from the carried config.json files, prints the card's name, runs benchmarks/bench_reward.py
     and benchmarks/bench_policy.py (each in its own process tree, each with a time limit) and
     writes to $OUT (or --out): gpu_bench.json (card, versions, labels, both benchmarks' last
     JSON lines or their errors), reward.json, policy.json, reward.log, policy.log.

Random-init weights give the real shapes and FLOPs, so times, throughput ratios and memory are
those of the real models; accuracies (the reward benchmark's test accuracy and its delta vs TRL)
and generated lengths are not: a random LM rarely emits EOS, so every response is
--new-tokens long. The output says so (``weights: random-init``).

    python benchmarks/gpu_bench.py run --random-init --smoke --out /tmp/gb   # CPU check, minutes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / ".cache" / "gpu_bench"
MODELS = {"smollm2-135m": "policy", "minilm-l6": "reward backbone"}
WHEELS = {"trl": "trl", "datasets": "datasets", "dill": "dill", "multiprocess": "multiprocess",
          "vaderSentiment": "vaderSentiment"}  # distribution -> top-level module
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack", ".onnx")
CARRY_LIMIT_MB = 56  # of the 64 MiB a call carries, leave room for the working tree
GPU_LIMITS_S = (210.0, 330.0, 540.0)  # reward, policy, both: one device call is at most 600 s
CPU_LIMIT_S = 3600.0  # a CPU run (the smoke check) is slow, not limited by a device call
SMOKE_POLICY = "--steps 2 --new-tokens 4 --prompts 2 --k 2 --repeats 1 --trl-precision fp32"
SMOKE_REWARD = "--steps 2 --score-texts 32 --batch-size 4 --max-length 32"


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# ----------------------------------------------------------------------------- prepare (here)


def copy_model_files(src: Path, dest: Path) -> list[str]:
    """Copy a HF model folder's top-level files except weights (config, tokenizer, generation config)."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name not in ("README.md", ".gitattributes"):
            shutil.copy2(f, dest / f.name)
            copied.append(f.name)
    if "config.json" not in copied:
        raise SystemExit(f"gpu_bench: {src} has no config.json")
    return copied


def prepare(a) -> None:
    from importlib.metadata import version

    from robust_rlhf.models.hub import resolve_model_path

    assets = Path(a.assets)
    for name in MODELS:
        files = copy_model_files(Path(resolve_model_path(name)), assets / "models" / name)
        print(f"{name}: {', '.join(files)}")
    if not a.no_wheels:
        specs = [f"{d}=={version(d)}" for d in WHEELS]
        wheels = assets / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        plats = [x for n in ("manylinux_2_28", "manylinux_2_17", "manylinux2014", "manylinux1") for x in
                 ("--platform", f"{n}_x86_64")]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *plats, "-d", str(wheels), *specs]
        print("$ " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        print("wheels: " + ", ".join(sorted(p.name for p in wheels.glob("*.whl"))))
    mb = _dir_mb(assets)
    print(f"{assets}: {mb:.1f} MB")
    if mb > CARRY_LIMIT_MB:
        raise SystemExit(f"gpu_bench: {assets} is {mb:.0f} MB, over the {CARRY_LIMIT_MB} MB a call can carry")
    rel = os.path.relpath(assets, ROOT)
    print(f"on the GPU machine: command 'python3 benchmarks/gpu_bench.py run --random-init', carry ['{rel}'], "
          "timeout_s 600")


# ----------------------------------------------------------------------------- run (GPU box)


def install_missing_wheels(wheels: Path, target: Path) -> list[str]:
    """pip-install (no index, no deps) the carried wheels whose module this Python lacks; returns them."""
    missing = [d for d, mod in WHEELS.items() if importlib.util.find_spec(mod) is None]
    files = [str(w) for d in missing for w in wheels.glob(f"{d}-*.whl")]
    absent = [d for d in missing if not list(wheels.glob(f"{d}-*.whl"))]
    if absent:
        print(f"gpu_bench: missing here and not carried: {', '.join(absent)} (run `prepare` first)", flush=True)
    if files:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *files], check=True)
    return [Path(f).name for f in files]


def random_init_model(config_dir: Path, dest: Path, layers: int | None = None, seed: int = 0) -> dict:
    """A randomly initialised model of ``config_dir``'s architecture, written to ``dest`` with its
    tokenizer files, loadable by ``from_pretrained``. ``layers`` shrinks the depth (smoke runs only).

    Returns ``{"architecture", "parameters", "layers"}``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(config_dir)
    if layers is not None:
        cfg.num_hidden_layers = layers
    causal = any(x.endswith("ForCausalLM") for x in (cfg.architectures or []))
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM if causal else AutoModel).from_config(cfg, dtype=torch.float32)
    copy_model_files(config_dir, dest)
    model.save_pretrained(dest, safe_serialization=True)  # rewrites config.json (with the depth used)
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "layers": cfg.num_hidden_layers}


def run_bench(script: str, args: list[str], env: dict, timeout_s: float, out: Path, name: str) -> dict:
    """Run one benchmark in its own process group; its log to out/<name>.log, its last JSON line
    to out/<name>.json. Returns ``{"result": ...}`` or ``{"error": ...}`` with the wall time."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    print(f"$ {shlex.join(cmd)}  (limit {timeout_s:.0f} s)", flush=True)
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            log.write(stdout or "")
            return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": time.perf_counter() - t0,
                    "command": shlex.join(cmd)}
        log.write(stdout)
    wall = time.perf_counter() - t0
    print(stdout, end="", flush=True)
    lines = [x for x in stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (out / f"{name}.log").read_text()[-600:]
        return {"error": f"exit {proc.returncode}: ...{tail}", "wall_s": wall, "command": shlex.join(cmd)}
    result = json.loads(lines[-1])
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    return {"result": result, "wall_s": wall, "command": shlex.join(cmd)}


def run(a) -> int:
    import torch

    limits = GPU_LIMITS_S if torch.cuda.is_available() else (CPU_LIMIT_S,) * 3
    a.reward_timeout_s, a.policy_timeout_s, a.total_timeout_s = (
        given if given is not None else default
        for given, default in zip((a.reward_timeout_s, a.policy_timeout_s, a.total_timeout_s), limits))
    os.environ.setdefault("TQDM_DISABLE", "1")  # before transformers is imported (save_pretrained's bar)
    out = Path(a.out or os.environ.get("OUT") or "gpu_bench_out")
    out.mkdir(parents=True, exist_ok=True)
    assets = Path(a.assets)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (cpu)"
    print(f"card: {card}  torch {torch.__version__}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    summary: dict = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda,
                     "weights": "random-init" if a.random_init else "pretrained", "smoke": a.smoke,
                     "loadavg_before": _loadavg()}
    try:
        _run(a, out, assets, work, summary)
    except Exception as e:  # still write what is known: the JSON is the call's only record
        summary["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        summary["loadavg_after"] = _loadavg()
        (out / "gpu_bench.json").write_text(json.dumps(summary, indent=1))
        shutil.rmtree(work, ignore_errors=True)
    failed = [b for b in a.benchmarks if "error" in summary.get(b, {})]
    print(f"card: {card}; wrote {out}/gpu_bench.json" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _loadavg() -> list[str] | None:
    p = Path("/proc/loadavg")
    return p.read_text().split()[:3] if p.exists() else None


def _run(a, out: Path, assets: Path, work: Path, summary: dict) -> None:
    site = work / "site"
    installed = install_missing_wheels(assets / "wheels", site) if (assets / "wheels").is_dir() else []
    summary["wheels_installed"] = installed
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "ROBUST_RLHF_CACHE": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join(x for x in (str(site), str(ROOT / "src"), os.environ.get("PYTHONPATH")) if x)}
    # TRL (and the datasets it needs) importable? If not, the policy benchmark still measures ours.
    probe = subprocess.run([sys.executable, "-c", "import trl, datasets, peft, vaderSentiment"], env=env,
                           capture_output=True, text=True)
    trl_import = "ok" if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["failed"])[-1]
    summary["trl_import"] = trl_import
    print(f"import trl, datasets, peft, vaderSentiment: {trl_import}", flush=True)
    models: dict[str, dict] = summary.setdefault("models", {})
    for name in MODELS:
        if a.random_init:
            cfg_dir = assets / "models" / name
            if not (cfg_dir / "config.json").exists():
                raise SystemExit(f"gpu_bench: {cfg_dir}/config.json missing: run `python benchmarks/gpu_bench.py prepare` "
                                 "here and carry its folder")
            dest = work / f"{name}-random-init"
            models[name] = {"path": str(dest), "weights": "random-init",
                            **random_init_model(cfg_dir, dest, layers=2 if a.smoke else None)}
        else:
            models[name] = {"path": name, "weights": "pretrained"}
        print(f"{name}: {models[name]}", flush=True)
    summary["label"] = (("random-init weights (architecture from config.json): times, throughput ratios and memory "
                         "are the real models'; accuracies and response lengths are not" if a.random_init
                         else "pretrained weights")
                        + ("; SMOKE: 2-layer models and tiny settings, numbers meaningless" if a.smoke else ""))
    policy_args = shlex.split(a.policy_args if a.policy_args is not None else (SMOKE_POLICY if a.smoke else ""))
    if trl_import != "ok" and "--trl-precision" not in policy_args:
        policy_args += ["--trl-precision", "none"]
    reward_args = shlex.split(a.reward_args if a.reward_args is not None else (SMOKE_REWARD if a.smoke else ""))
    t_start = time.perf_counter()
    if "reward" in a.benchmarks:
        summary["reward"] = run_bench("bench_reward.py", ["--backbone", models["minilm-l6"]["path"], *reward_args],
                                      env, a.reward_timeout_s, out, "reward")
    if "policy" in a.benchmarks:
        left = a.total_timeout_s - (time.perf_counter() - t_start)
        summary["policy"] = run_bench("bench_policy.py", ["--model", models["smollm2-135m"]["path"], *policy_args],
                                      env, max(30.0, min(a.policy_timeout_s, left)), out, "policy")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> None:
    p = _Parser(prog="gpu_bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    pp = sub.add_parser("prepare", help="here (network): config + tokenizer files and wheels into --assets")
    pp.add_argument("--assets", default=str(ASSETS), help="output folder, git-ignored (default: %(default)s)")
    pp.add_argument("--no-wheels", action="store_true", help="copy the model files only")
    pr = sub.add_parser("run", help="on the GPU machine: both benchmarks, JSON to $OUT")
    pr.add_argument("--assets", default=str(ASSETS), help="the carried folder from `prepare` (default: %(default)s)")
    pr.add_argument("--random-init", action="store_true",
                    help="random weights of the real architectures, from the carried config.json (labelled so)")
    pr.add_argument("--smoke", action="store_true",
                    help="2-layer models and tiny settings: checks that everything runs, numbers meaningless")
    pr.add_argument("--out", help="where the JSON and logs go (default: $OUT, else ./gpu_bench_out)")
    pr.add_argument("--benchmarks", default="reward,policy", type=lambda s: s.split(","),
                    help="comma-separated subset of reward,policy (default: %(default)s)")
    pr.add_argument("--policy-args", help=f"arguments for bench_policy.py (default: its defaults; --smoke: {SMOKE_POLICY!r})")
    pr.add_argument("--reward-args", help=f"arguments for bench_reward.py (default: its defaults; --smoke: {SMOKE_REWARD!r})")
    pr.add_argument("--reward-timeout-s", type=float,
                    help=f"limit of the reward benchmark (default: {GPU_LIMITS_S[0]:.0f} on a GPU, {CPU_LIMIT_S:.0f} on CPU)")
    pr.add_argument("--policy-timeout-s", type=float,
                    help=f"limit of the policy benchmark (default: {GPU_LIMITS_S[1]:.0f} on a GPU, {CPU_LIMIT_S:.0f} on CPU)")
    pr.add_argument("--total-timeout-s", type=float,
                    help=f"both together (default: {GPU_LIMITS_S[2]:.0f} on a GPU, inside one 600 s device call; "
                         f"{CPU_LIMIT_S:.0f} on CPU)")
    a = p.parse_args(argv)
    if a.cmd == "run":
        bad = [b for b in a.benchmarks if b not in ("reward", "policy")]
        if bad or not a.benchmarks:
            p.error(f"--benchmarks: expected a subset of reward,policy, got {','.join(a.benchmarks)}")
        if a.random_init and not (Path(a.assets) / "models").is_dir():
            p.error(f"--assets {a.assets}: no models/ folder; run `python benchmarks/gpu_bench.py prepare` first")
        sys.exit(run(a))
    sys.path.insert(0, str(ROOT / "src"))
    prepare(a)


if __name__ == "__main__":
    main()
