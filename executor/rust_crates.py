"""The crates HumanEval-X's Rust tests import (``rand``, ``regex``, ``md5``), from Debian's packaged sources.

HumanEval-X's Rust programs are ``#[cfg(test)]`` modules under declarations that ``use rand::Rng``,
``regex::Regex`` and ``md5`` (CodeGeeX runs them with ``cargo test`` in a project that depends on them). Here
the crates come from Debian's ``librust-rand-dev``, ``librust-regex+default-dev`` and ``librust-md5-dev`` (sources in
``/usr/share/cargo/registry``): a trusted program builds them once with cargo, offline, in the sandbox, and each
test program is compiled by ``rustc --test`` against the resulting libraries, mounted read-only.
"""

from __future__ import annotations

import dataclasses
import os

from dscbatch.executor.languages import Language

REGISTRY = "/usr/share/cargo/registry"
CRATES = ("rand", "regex", "md5")
# Where the built libraries are mounted in the sandbox.
DEPS_DIR = "/opt/dscbatch/rust-deps"
# regex with its default features (Debian: librust-regex+default-dev), as HumanEval-X's tests parse \s and \w.
MANIFEST = """[package]
name = "dscbatch-deps"
version = "0.0.0"
edition = "2021"
[dependencies]
rand = "0.8"
regex = "1"
md5 = "0.7"
"""
CONFIG = f"""[source.crates-io]
replace-with = "debian"
[source.debian]
directory = "{REGISTRY}"
[net]
offline = true
"""
# Run by the sandbox's Python with /tmp/out bound writable: build the crates, keep their libraries.
BUILD = f"""import glob, os, shutil, subprocess, sys
os.makedirs("/tmp/project/src")
os.makedirs("/tmp/cargo-home")
open("/tmp/project/Cargo.toml", "w").write({MANIFEST!r})
open("/tmp/project/src/lib.rs", "w").close()
open("/tmp/cargo-home/config.toml", "w").write({CONFIG!r})
env = dict(os.environ, CARGO_HOME="/tmp/cargo-home")
done = subprocess.run(["cargo", "build", "--offline", "-q"], cwd="/tmp/project", env=env)
if done.returncode != 0:
    sys.exit(1)
for path in glob.glob("/tmp/project/target/debug/deps/*.rlib"):
    shutil.copy(path, "/tmp/out")
"""


def packaged() -> bool:
    """Whether Debian's sources of the crates are installed."""
    names = os.listdir(REGISTRY) if os.path.isdir(REGISTRY) else []
    return all(any(name.startswith(f"{crate}-") for name in names) for crate in CRATES)


def test_harness(language: Language, built: str) -> Language:
    """``language`` (Rust) compiling with ``--test`` against the libraries in ``built`` (a host folder)."""
    externs: list[str] = []
    for crate in CRATES:
        library = next(name for name in sorted(os.listdir(built)) if name.startswith(f"lib{crate}-"))
        externs += ["--extern", f"{crate}={DEPS_DIR}/{library}"]
    rustc = ("rustc", "--edition", "2021", "--test", "-L", f"dependency={DEPS_DIR}", *externs, "-o", "a.out",
             "test.rs")
    return dataclasses.replace(language, compile=(rustc,))
