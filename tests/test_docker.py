"""Dockerfile and image scripts: what can be checked without building (a build takes minutes and
needs buildah; scripts/build_image.sh does it and is run by hand, see docs/device-lab.md)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_args() -> dict[str, str]:
    """ARG defaults, as a build without --build-arg sees them."""
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.M))


def test_every_copy_source_exists_in_a_fresh_clone():
    """A COPY of a missing path fails the build; docker/wheels must exist even with no wheel in it,
    and only committed files count (a clone has nothing else)."""
    args = dockerfile_args()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources, "no COPY lines found"
    for src in sources:
        src = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], src)
        assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in tracked), f"COPY source {src} is not committed"
    assert args["TORCH_WHEEL_DIR"] == "docker/wheels"


def test_full_target_installs_cpu_torch_from_local_wheel_or_cpu_index():
    text = (ROOT / "Dockerfile").read_text()
    full = text[text.index("AS full"):]
    assert '--find-links /tmp/torch-wheels "torch==${TORCH_VERSION}+cpu"' in full
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in full
    assert dockerfile_args()["TORCH_INDEX_URL"].endswith("/whl/cpu")
    # the pinned full requirements cover every runtime dependency of the package except torch
    pinned = {line.split("==")[0].lower() for line in (ROOT / "docker" / "requirements-full.txt").read_text().splitlines()
              if "==" in line}
    deps = re.search(r"dependencies = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), flags=re.S).group(1)
    names = {n.lower() for n in re.findall(r'^\s*"([A-Za-z0-9_.-]+)', deps, flags=re.M)}
    assert names - {"torch"} <= pinned, names - {"torch"} - pinned


def test_build_script_rejects_unknown_target_and_parses():
    script = ROOT / "scripts" / "build_image.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script), "nonsense"], capture_output=True, text=True)
    assert r.returncode == 2 and "not bench or full" in r.stderr
