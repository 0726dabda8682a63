"""Run an ONNX artifact on arm64: natively on an arm64 host, under qemu-user on an x86 host.

On x86 the model runs with the real aarch64 onnxruntime wheel (the same version as the host's)
inside a Debian bookworm arm64 root that ``setup()`` builds once and caches:

* ``debootstrap --foreign --arch=arm64 --variant=minbase`` downloads the base packages, and every
  .deb is unpacked with ``dpkg-deb`` — no binfmt_misc, no chroot, no second stage needed;
* ``pip download --platform manylinux..._aarch64 --only-binary=:all:`` fetches numpy and
  onnxruntime wheels, which are unzipped into the root;
* onnxruntime's CPU detection (pytorch/cpuinfo) refuses an x86 ``/proc/cpuinfo``; qemu-user opens
  ``<root>/proc/cpuinfo`` instead of the host's when started with ``-L <root>``, so the root holds
  an ARM-looking one (a Cortex-A72 description; what it claims does not change the results, the
  kernels are chosen from the emulated CPU's hwcaps).

Emulated latency measures qemu, not a board: it is reported with ``"emulated": true`` and must
never be compared with real devices. What the emulated run is for is *correctness* of the aarch64
kernels: its outputs are compared with the host run on identical inputs.

No torch here: this module is on the device side.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from .errors import UserError

ROOT_ENV = "EDGECLEAN_ARM64_ROOT"
MIRROR_ENV = "EDGECLEAN_DEBIAN_MIRROR"
SUITE = "bookworm"  # glibc 2.36 and Python 3.11, like the project's own floor
PY = "3.11"
READY = ".edgeclean-ready.json"
# Packages beyond minbase: the Python interpreter and stdlib, and the C++ runtime onnxruntime needs.
EXTRA_DEBS = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgomp1")
AARCH64_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")

FAKE_CPUINFO_CORE = """processor\t: {i}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""


def is_arm64_host() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def root_dir() -> Path:
    env = os.environ.get(ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeclean" / "arm64-root"


def is_ready(root: Path | None = None) -> bool:
    return (Path(root or root_dir()) / READY).is_file()


def root_info(root: Path | None = None) -> dict:
    path = Path(root or root_dir()) / READY
    return json.loads(path.read_text()) if path.is_file() else {}


def _qemu() -> str:
    exe = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if exe is None:
        raise UserError("qemu-aarch64-static not found; install it (apt-get install qemu-user-static)")
    return exe


def _run(cmd: list[str], log, **kw) -> subprocess.CompletedProcess:
    log(f"$ {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise UserError(f"arm64 setup step failed: {' '.join(cmd[:3])} ... ({' | '.join(tail)[:300]}); "
                        "check the network to the Debian mirror / PyPI and retry with --setup")
    return proc


def fake_cpuinfo(cores: int) -> str:
    return "\n".join(FAKE_CPUINFO_CORE.format(i=i) for i in range(max(1, cores)))


def setup(root: Path | None = None, force: bool = False, log=print) -> dict:
    """Build the cached arm64 root (a few minutes, once). Returns what was installed and timings."""
    root = Path(root or root_dir())
    if is_ready(root) and not force:
        return root_info(root)
    if is_arm64_host():
        raise UserError("this host is arm64: --target arm64 runs natively and needs no emulation root")
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if debootstrap is None:
        raise UserError("debootstrap not found; install it (apt-get install debootstrap qemu-user-static)")
    _qemu()
    import onnxruntime

    t_start = time.perf_counter()
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    # debootstrap's own default mirror unless one is given (a local mirror or proxy, say).
    mirror = [os.environ[MIRROR_ENV]] if os.environ.get(MIRROR_ENV) else []
    _run([debootstrap, "--foreign", "--arch=arm64", "--variant=minbase", f"--include={','.join(EXTRA_DEBS)}",
          SUITE, str(partial), *mirror], log)
    t_boot = time.perf_counter()
    # The first stage unpacks only the "required" set; unpack every downloaded .deb (python too).
    # --keep-directory-symlink keeps bookworm's merged /usr (/lib -> usr/lib) intact, as debootstrap does.
    archives = partial / "var" / "cache" / "apt" / "archives"
    debs = sorted(archives.glob("*.deb"))
    for deb in debs:
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-C", str(partial), "--keep-directory-symlink", "-xf", "-"], input=data, check=True)
        deb.unlink()
    t_debs = time.perf_counter()
    # Wheels of the same onnxruntime version as the host, so host and arm64 run the same code.
    wheels = partial / "tmp" / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", PY,
           "--implementation", "cp", "-d", str(wheels)]
    for plat in AARCH64_PLATFORMS:
        cmd += ["--platform", plat]
    _run(cmd + [f"onnxruntime=={onnxruntime.__version__}", f"numpy=={np.__version__}"], log)
    site = partial / "opt" / "edgeclean" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    names = []
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as zf:
            for member in zf.infolist():
                target = zf.extract(member, site)
                mode = member.external_attr >> 16
                if mode:
                    os.chmod(target, mode & 0o777 | 0o600)
        names.append(whl.name)
    shutil.rmtree(wheels)
    t_wheels = time.perf_counter()
    # Some package leaves /proc as a link to the host's /proc: the root needs its own directory.
    proc = partial / "proc"
    if proc.is_symlink() or proc.is_file():
        proc.unlink()
    proc.mkdir(exist_ok=True)
    (partial / "proc" / "cpuinfo").write_text(fake_cpuinfo(os.cpu_count() or 1))
    info = {
        "suite": SUITE,
        "python": PY,
        "debs": len(debs),
        "wheels": names,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "seconds": {"debootstrap": round(t_boot - t_start, 1), "unpack_debs": round(t_debs - t_boot, 1),
                    "wheels": round(t_wheels - t_debs, 1), "total": round(time.perf_counter() - t_start, 1)},
    }
    (partial / READY).write_text(json.dumps(info, indent=2))
    # Check the root actually runs onnxruntime before publishing it.
    check = _emulated_python(partial, ["-c", "import onnxruntime, numpy; print(onnxruntime.__version__)"])
    if check.returncode != 0:
        raise UserError(f"the arm64 root at {partial} cannot import onnxruntime ({check.stderr.strip()[-300:]}); "
                        "remove it and retry with --setup")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial, root)
    info["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    (root / READY).write_text(json.dumps(info, indent=2))
    return info


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def _emulated_python(root: Path, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run the root's aarch64 python3 under qemu-user; ``-L root`` makes the root's loader,
    libraries and fake /proc/cpuinfo win over the host's."""
    with tempfile.TemporaryDirectory() as shim:
        # Only the edgeclean package itself goes on the path: the host's site-packages hold x86 wheels.
        os.symlink(_package_dir(), Path(shim) / "edgeclean")
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONPATH": f"{root / 'opt' / 'edgeclean' / 'site-packages'}:{shim}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
        }
        cmd = [_qemu(), "-L", str(root), str(root / "usr" / "bin" / f"python{PY}"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def bench_arm64(
    model_path: str | Path,
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
    seed: int = 0,
    root: Path | None = None,
    tolerance: float = 1e-4,
    session_config: dict | None = None,
) -> dict:
    """Benchmark on arm64; under emulation also compare outputs with the host on the same inputs."""
    from .bench import bench_host

    model_path = Path(model_path).resolve()
    if is_arm64_host():
        info = bench_host(model_path, threads=threads, runs=runs, warmup=warmup, seed=seed, session_config=session_config)
        info["target"] = "arm64"
        return info
    root = Path(root or root_dir())
    if not is_ready(root):
        raise UserError(f"no arm64 root at {root}; build it once with: edgeclean bench --target arm64 --setup "
                        f"(or set {ROOT_ENV} to an existing one)")
    with tempfile.TemporaryDirectory(prefix="edgeclean-arm64-") as tmp:
        tmp = Path(tmp)
        host = bench_host(model_path, threads=threads, runs=max(1, min(runs, 20)), warmup=min(warmup, 3), seed=seed,
                          outputs_path=tmp / "host_out.npz", profile=True, session_config=session_config)
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        from .bench import make_inputs

        feeds = make_inputs(sess, seed)
        np.savez(tmp / "inputs.npz", **feeds)
        del sess
        args = ["-m", "edgeclean.bench", str(model_path), "--runs", str(runs), "--warmup", str(warmup),
                "--inputs", str(tmp / "inputs.npz"), "--outputs", str(tmp / "arm_out.npz")]
        if threads:
            args += ["--threads", str(threads)]
        for key, value in (session_config or {}).items():
            args += ["--session-config", f"{key}={value}"]
        t0 = time.perf_counter()
        proc = _emulated_python(root, args)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise UserError(f"the emulated arm64 run failed ({proc.stderr.strip()[-400:]}); "
                            "rebuild the root with: edgeclean bench --target arm64 --setup --force")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(tmp / "host_out.npz") as h, np.load(tmp / "arm_out.npz") as a:
            diffs = {k: float(np.max(np.abs(h[k].astype(np.float64) - a[k].astype(np.float64)))) for k in h.files}
            first = h.files[0]
            scale = float(np.max(np.abs(h[first]))) if h[first].size else 0.0
            top1_same = bool(np.array_equal(h[first].argmax(-1), a[first].argmax(-1))) if h[first].ndim >= 1 else True
    max_diff = max(diffs.values()) if diffs else 0.0
    info["cpu"]["model"] = f"qemu-user aarch64 (the root's fake /proc/cpuinfo says: {info['cpu']['model']})"
    info.update({
        "target": "arm64",
        "emulated": True,
        "emulator": subprocess.run([_qemu(), "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        "note": "latency under qemu-user emulation: not comparable with real arm64 boards",
        "emulated_wall_s": round(wall, 2),
        "host_compare": {
            "max_abs_diff": max_diff,
            "per_output": diffs,
            "max_abs_output": scale,  # the size of what is compared, to read the diff against
            "top1_equal": top1_same,
            "tolerance": tolerance,
            "ok": max_diff <= tolerance,
            "host_latency_ms": host["latency_ms"],
            "host_cpu": host["cpu"]["model"],
        },
    })
    return info
