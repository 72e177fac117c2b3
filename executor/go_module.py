"""A Go module for HumanEval-X's Go tests built from Debian's packaged sources, offline.

HumanEval-X's Go tests import ``github.com/stretchr/testify/assert`` from a vendored module (its
``go-vendor.tar.gz``). Debian bookworm packages testify and what its ``assert`` imports as sources under
``/usr/share/gocode/src`` (``golang-github-stretchr-testify-dev`` and its dependencies): this writes a module
folder from them, ``go.mod`` and ``vendor/`` with only the packages ``assert`` needs, at the versions Debian
ships (testify 1.8.1 against HumanEval-X's 1.8.0). The executor image builds it at a fixed path
(k8s/images/executor.Dockerfile) for ``DSCBATCH_SANDBOX_GO_MODULE``:

    python -m dscbatch.executor.go_module /opt/dscbatch/go-module
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from dscbatch.core.errors import DscbatchError

GOCODE = Path("/usr/share/gocode/src")
# The module's name in HumanEval-X's go.mod.
MODULE = "humanEval"
# (module path, Debian package, the module's packages assert imports; "" is the module's root)
VENDORED = (
    ("github.com/stretchr/testify", "golang-github-stretchr-testify-dev", ("assert",)),
    ("github.com/davecgh/go-spew", "golang-github-davecgh-go-spew-dev", ("spew",)),
    ("github.com/pmezard/go-difflib", "golang-github-pmezard-go-difflib-dev", ("difflib",)),
    ("gopkg.in/yaml.v3", "golang-gopkg-yaml.v3-dev", ("",)),
)


class GoModuleError(DscbatchError):
    pass


def packaged() -> bool:
    """Whether Debian's sources of every vendored package are installed."""
    return all((GOCODE / path / package).is_dir() for path, _, packages in VENDORED for package in packages)


def upstream_version(debian_package: str) -> str:
    """The upstream version of an installed Debian package, as Go writes it (1.8.1-1 is v1.8.1)."""
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", debian_package], capture_output=True, text=True)
    found = re.match(r"(?:\d+:)?(\d+(?:\.\d+)*)", done.stdout) if done.returncode == 0 else None
    if found is None:
        raise GoModuleError(f"{debian_package} is not installed (HumanEval-X's Go tests need testify)")
    return f"v{found.group(1)}"


def build(target: Path) -> Path:
    """Write the module (``go.mod``, ``vendor/``) into ``target``, which must not exist yet."""
    if not packaged():
        raise GoModuleError(f"testify's sources are not in {GOCODE}: install golang-github-stretchr-testify-dev")
    requires, listed = [], []
    for path, debian_package, packages in VENDORED:
        version = upstream_version(debian_package)
        requires.append(f"\t{path} {version}\n")
        listed.append(f"# {path} {version}\n## explicit\n")
        for package in packages:
            name = f"{path}/{package}".rstrip("/")
            listed.append(f"{name}\n")
            destination = target / "vendor" / name
            destination.mkdir(parents=True)
            for source in sorted((GOCODE / name).glob("*.go")):
                if not source.name.endswith("_test.go"):
                    shutil.copy(source, destination)
    (target / "go.mod").write_text(f"module {MODULE}\n\ngo 1.18\n\nrequire (\n{''.join(requires)})\n")
    (target / "vendor" / "modules.txt").write_text("".join(listed))
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m dscbatch.executor.go_module DIR")
    print(build(Path(sys.argv[1])))
