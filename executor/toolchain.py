"""Run a program in any supported language in the sandbox: a small Python *driver* compiles and runs it there.

The sandbox runs one Python program (executor/sandbox.py), with all its guarantees; for another language that
program is a driver, generated here, that writes the source to ``/tmp``, runs the language's compile commands and
then the program, all as its children under the same limits, namespaces and uid. A compile command that fails
makes the run ``failed`` with the compiler's message (the driver prints it and exits 1); a command the sandbox
killed (CPU limit, SIGKILL) is passed on as 128 + the signal, so that it reads as ``timeout`` as a Python
program's would. The compilation has the language's allowance; the compiled program then gets the sandbox's own
seconds (CPU and wall clock, a SIGALRM), as a Python program does. The run itself replaces the driver
(``execvp``) unless its verdict needs its output (mono's ``Debug.Assert`` and node's ``console.assert`` only
print): then the driver reads it.

A run's limits are the sandbox's settings widened by the language's allowance (executor/languages.py), and its
mounts add the toolchain's configuration under ``/etc`` and the test dependencies a user provides
(:class:`Resources`): the jar the Java tests compile against and a Go module with vendored packages.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dscbatch.core.errors import DscbatchError
from dscbatch.core.settings import Settings
from dscbatch.executor import rust_crates
from dscbatch.executor.languages import (
    ALTERNATIVES,
    CLASSPATH_DIR,
    GO_CACHE_DIR,
    GO_MODULE_DIR,
    LANGUAGES,
    MODULES_DIR,
    PYTHON,
    Language,
)
from dscbatch.executor.sandbox import Limits, Sandbox, Setup, Verdict

log = logging.getLogger(__name__)

# Bytes of a failed compilation's output kept (its end holds the summary; the sandbox keeps 2000 characters).
COMPILE_OUTPUT_BYTES = 64 << 10
# A first compilation in a fresh tmpfs writes caches (Go's build cache holds the std packages' export data).
TMPFS_BYTES = 512 << 20
# Largest file a compiler may write: a Rust test binary linked with regex and its debug information is ~30 MB.
BINARY_BYTES = 128 << 20
# Open files for a toolchain: a JVM opens its modules and jars, R refuses to start below 128.
OPEN_FILES = 256
DRIVER = '''import os, resource, shutil, signal, subprocess, sys
os.chdir({workdir!r})
if {warm_cache!r} and os.path.isdir({warm_cache!r}):
    shutil.copytree({warm_cache!r}, os.environ.get("GOCACHE", "/tmp/.cache/go-build"))
with open({source!r}, "w") as f:
    f.write({code!r})
env = dict(os.environ, **{env!r})
for argv in {compile!r}:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env)
    except OSError as error:
        print(f"compilation failed: cannot run {{argv[0]}}: {{error}}", flush=True)
        sys.exit(1)
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-{keep}:].decode(errors="replace"))
    if done.returncode < 0:
        print(f"\\n{{argv[0]}} was killed by signal {{-done.returncode}}", flush=True)
        sys.exit(128 - done.returncode)
    if done.returncode != 0:
        print(f"\\ncompilation failed: {{argv[0]}} exited with status {{done.returncode}}", flush=True)
        sys.exit(1)
run = {run!r}
if {seconds!r}:
    cpu = int(resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu + {seconds!r}, cpu + {seconds!r}))
if not {capture!r}:
    if {seconds!r}:
        signal.alarm({seconds!r})
    os.execvpe(run[0], run, env)
try:
    done = subprocess.run(run, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          timeout={seconds!r} or None)
except subprocess.TimeoutExpired:
    sys.exit(128 + signal.SIGALRM)
output = done.stdout.decode(errors="replace")
sys.stdout.write(output[-{keep}:])
if done.returncode < 0:
    sys.exit(128 - done.returncode)
if done.returncode == 0 and {marker!r} is not None and {marker!r} in output:
    sys.exit(1)
if done.returncode == 0 and {any_output!r} and output:
    sys.exit(1)
sys.exit(done.returncode)
'''
JAVA_MAIN_CLASS = re.compile(r"(?:public\s+)?(?:final\s+)?class\s+(\w+)[^{]*\{(?:(?!\bclass\s).)*?"
                             r"public\s+static\s+void\s+main", re.DOTALL)
JAVA_PUBLIC_CLASS = re.compile(r"public\s+(?:final\s+)?class\s+(\w+)")
# An import of a package outside Go's standard library (a domain in its path): needs the module.
# A Rust program made of test functions (HumanEval-X's): compiled as a test harness with the crates it uses.
RUST_TESTS = "#[cfg(test)]"
# Building the Rust crates once (cargo, about 10 CPU seconds) or a Go module's cache.
WARM_UP_SECONDS = 600
GO_WARM_UP = ('package main\n\nimport (\n    "testing"\n    "github.com/stretchr/testify/assert"\n)\n\n'
              'func TestWarm(t *testing.T) {\n    assert.New(t).Equal(2, 1+1)\n}\n')
GO_MODULE_IMPORT = re.compile(r'"[\w-]+(?:\.[\w-]+)+/[^"]*"')
# The test modules shipped with dscbatch (package data), one folder per Language.modules.
MODULES = Path(__file__).resolve().parent / "modules"


class MissingResourceError(DscbatchError):
    pass


class MissingToolchainError(DscbatchError):
    pass


@dataclass(frozen=True)
class Resources:
    """Test dependencies on the host, mounted read-only: jars on the Java classpath (DeepSeek's
    ``javatuples-1.2.jar``) and a Go module directory (``go.mod`` and ``vendor/``, HumanEval-X's)."""

    jars: tuple[str, ...] = ()
    go_module: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Resources:
        jars = tuple(path for path in settings.sandbox_java_classpath.split(":") if path)
        return cls(jars, settings.sandbox_go_module)


def limits_for(language: Language, base: Limits) -> Limits:
    """``base`` (the sandbox's settings) widened by the language's allowance."""
    if language is PYTHON:
        return base
    wall = base.wall_seconds + language.compile_seconds
    return dataclasses.replace(base, wall_seconds=wall, cpu_seconds=max(base.cpu_seconds, int(wall + 0.999)),
                               memory_bytes=max(base.memory_bytes, language.memory_mb << 20),
                               processes=max(base.processes, language.processes),
                               open_files=max(base.open_files, OPEN_FILES),
                               file_bytes=max(base.file_bytes, BINARY_BYTES if language.compile else 0),
                               tmpfs_bytes=max(base.tmpfs_bytes, TMPFS_BYTES))


def java_class(code: str) -> str:
    """The class whose ``main`` runs: the public class, else the class declaring ``main``, else ``Main``."""
    public = JAVA_PUBLIC_CLASS.search(code)
    if public:
        return public.group(1)
    found = JAVA_MAIN_CLASS.findall(code)
    return str(found[-1]) if found else "Main"


def driver(language: Language, code: str, go_module: bool = False, warm_cache: str = "",
           workdir: str | None = None, seconds: int = 0) -> str:
    """The Python program that compiles and runs ``code`` in the sandbox (in ``workdir``: benchmarks run it
    bare, without the sandbox, to measure what the sandbox costs). ``seconds``: the run step's own CPU and
    wall-clock limit (a SIGALRM, which the sandbox reads as ``timeout``), after the compilation's allowance."""
    source = language.source
    names = {"source": source}
    if language.class_named:
        names["class"] = java_class(code)
        source = names["source"] = f"{names['class']}.java"

    def fill(argv: Sequence[str]) -> list[str]:
        return [part.format(**names) if "{" in part and "}" in part else part for part in argv]

    env = dict(language.env)
    if language.code == "go" and not go_module:
        env["GO111MODULE"], env["GOFLAGS"] = "off", ""
    return DRIVER.format(workdir=workdir or (GO_MODULE_DIR if go_module else "/tmp"), source=source, code=code, env=env,
                         compile=[fill(argv) for argv in language.compile], run=fill(language.run),
                         capture=language.fail_marker is not None or language.fail_on_output,
                         marker=language.fail_marker, any_output=language.fail_on_output,
                         keep=COMPILE_OUTPUT_BYTES, warm_cache=warm_cache, seconds=seconds)


def unpacked_go_module(directory: str) -> str:
    """``directory``, or where its ``go-vendor.tar.gz`` (HumanEval-X's layout) is unpacked with its go.mod."""
    archive = os.path.join(directory, "go-vendor.tar.gz")
    if os.path.isdir(os.path.join(directory, "vendor")) or not os.path.isfile(archive):
        return directory
    unpacked = tempfile.mkdtemp(prefix="dscbatch-go-module-")
    os.chmod(unpacked, 0o755)  # read by the sandbox's slot uid
    atexit.register(shutil.rmtree, unpacked, True)
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    for name in ("go.mod", "go.sum"):
        if os.path.isfile(os.path.join(directory, name)):
            shutil.copy(os.path.join(directory, name), unpacked)
    return unpacked


def go_module_mounts(directory: str) -> tuple[tuple[str, str], ...]:
    """A Go module's ``go.mod`` and ``vendor/`` mounted in the sandbox's module directory (``go.sum`` too)."""
    mounts = []
    for name in ("go.mod", "go.sum", "vendor"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            mounts.append((path, f"{GO_MODULE_DIR}/{name}"))
    if not mounts or mounts[0][0] != os.path.join(directory, "go.mod"):
        raise MissingResourceError(f"{directory}: not a Go module (no go.mod)")
    if not os.path.isdir(os.path.join(directory, "vendor")):
        raise MissingResourceError(f"{directory}: the Go module has no vendor/ directory (run `go mod vendor`, or "
                                   "unpack HumanEval-X's go-vendor.tar.gz there)")
    return tuple(mounts)


class Toolchains:
    """Runs programs of every language in one :class:`Sandbox`; thread-safe as the sandbox is."""

    def __init__(self, sandbox: Sandbox, resources: Resources = Resources()) -> None:
        self.sandbox = sandbox
        self.resources = resources
        for jar in resources.jars:
            if not os.path.isfile(jar):
                raise MissingResourceError(f"{jar}: no such jar (the Java tests' classpath)")
        self._go_mounts = go_module_mounts(unpacked_go_module(resources.go_module)) if resources.go_module else ()
        self._built: dict[str, str | MissingResourceError] = {}
        self._lock = threading.Lock()

    def setup(self, language: Language, code: str) -> Setup:
        mounts = [(path, path) for path in (ALTERNATIVES, *language.etc) if os.path.exists(path)]
        if language.modules:
            mounts.append((str(MODULES / language.modules), MODULES_DIR))
        if language.class_named or language.code == "scala":
            mounts += [(jar, f"{CLASSPATH_DIR}/{os.path.basename(jar)}") for jar in self.resources.jars]
        if language.code == "go" and self._uses_module(code):
            mounts += [*self._go_mounts, (self._warm_go_cache(), GO_CACHE_DIR)]
        return Setup(limits_for(language, self.sandbox.limits), tuple(mounts))

    def _warm_go_cache(self) -> str:
        """A build cache holding the Go module's vendored packages, built once in the sandbox by a trivial
        test that imports them (cold, each run would compile them again: about 6 s of 9 CPU seconds)."""
        program = driver(LANGUAGES["go"], GO_WARM_UP, go_module=True)
        setup = Setup(limits_for(LANGUAGES["go"], self.sandbox.limits), self._go_mounts)
        return self._once("go-build", lambda: self._build("go-build", program, setup, "/tmp/.cache/go-build",
                                                          "the Go module does not build"))

    def _rust_crates(self) -> str:
        """The libraries of the crates HumanEval-X's Rust tests use, built once (executor/rust_crates.py)."""
        def build() -> str:
            if not rust_crates.packaged():
                raise MissingResourceError("HumanEval-X's Rust tests use the crates rand, regex and md5, which are "
                                           "not installed here: install librust-rand-dev librust-regex+default-dev "
                                           "librust-md5-dev")
            limits = dataclasses.replace(limits_for(LANGUAGES["rs"], self.sandbox.limits),
                                         wall_seconds=WARM_UP_SECONDS, cpu_seconds=WARM_UP_SECONDS)
            return self._build("rust-deps", rust_crates.BUILD, Setup(limits, ((ALTERNATIVES, ALTERNATIVES),)),
                               "/tmp/out", "the Rust crates do not build")
        return self._once("rust-deps", build)

    def _once(self, name: str, build: Callable[[], str]) -> str:
        """What ``build`` made the first time, or the :class:`MissingResourceError` it raised then, again: a
        failed build is not retried for every program (restart the executor once the host is fixed)."""
        with self._lock:
            if name not in self._built:
                try:
                    self._built[name] = build()
                except MissingResourceError as error:
                    log.error("%s; programs that need it fail with this reason", error)
                    self._built[name] = error
            built = self._built[name]
        if isinstance(built, MissingResourceError):
            raise built
        return built

    def _build(self, name: str, program: str, setup: Setup, target: str, failure: str) -> str:
        """A host folder that trusted ``program`` fills in the sandbox, bound writable at ``target``; read-only
        once built."""
        directory = tempfile.mkdtemp(prefix=f"dscbatch-{name}-")
        os.chmod(directory, 0o777)  # written by the sandbox's slot uid
        atexit.register(shutil.rmtree, directory, True)
        verdict = self.sandbox.run(program, dataclasses.replace(setup, writable=((directory, target),)))
        if not verdict.passed:
            raise MissingResourceError(f"{failure}: {verdict.error.strip()[-500:]}")
        os.chmod(directory, 0o755)
        return directory

    def _uses_module(self, code: str) -> bool:
        return bool(self._go_mounts) and GO_MODULE_IMPORT.search(code) is not None

    def run(self, language: Language, code: str) -> Verdict:
        """The program's verdict. One that needs a test dependency this host lacks (a Go module, the Rust
        crates) is ``failed`` with what is missing, without running: a final verdict, not an error to retry."""
        if language is PYTHON:
            return self.sandbox.run(code)
        try:
            return self._run(language, code)
        except MissingResourceError as error:
            return Verdict("failed", f"not run: {error}")

    def _run(self, language: Language, code: str) -> Verdict:
        module = language.code == "go" and self._uses_module(code)
        if language.code == "go" and not self._go_mounts and (imported := GO_MODULE_IMPORT.search(code)):
            raise MissingResourceError(f"the program imports {imported.group(0)}, outside Go's standard library, "
                                       "and no Go module is configured here (DSCBATCH_SANDBOX_GO_MODULE or "
                                       "--go-module: a folder with go.mod and vendor/, or HumanEval-X's)")
        setup = self.setup(language, code)
        if language.code == "rs" and RUST_TESTS in code:
            built = self._rust_crates()
            language = rust_crates.test_harness(language, built)
            setup = dataclasses.replace(setup, mounts=(*setup.mounts, (built, rust_crates.DEPS_DIR)))
        seconds = max(1, int(min(self.sandbox.limits.wall_seconds, self.sandbox.limits.cpu_seconds) + 0.999))
        program = driver(language, code, go_module=module, warm_cache=GO_CACHE_DIR if module else "",
                         seconds=seconds if language.compile else 0)
        return self.sandbox.run(program, setup)

    def missing_resources(self, languages: Sequence[Language]) -> dict[str, str]:
        """For each of ``languages`` that runs here without a test dependency some benchmarks need, what is
        missing (the executor logs it at start: those programs get a failed verdict saying so)."""
        missing = {}
        codes = {language.code for language in languages}
        if "java" in codes and not self.resources.jars:
            missing["java"] = ("no jar on the classpath (DSCBATCH_SANDBOX_JAVA_CLASSPATH): DeepSeek's Java tests "
                               "import javatuples")
        if "go" in codes and not self._go_mounts:
            missing["go"] = ("no Go module (DSCBATCH_SANDBOX_GO_MODULE): HumanEval-X's Go tests import testify and "
                             "fail here")
        if "rs" in codes and not rust_crates.packaged():
            missing["rs"] = ("Debian's rand, regex and md5 crates are not installed: HumanEval-X's Rust tests fail "
                             "here")
        return missing

    def check(self, language: Language) -> Verdict:
        """The verdict of the language's trivial program: ``passed`` where its toolchain works here."""
        return self.run(language, language.trivial)

    def runnable(self, languages: Sequence[Language]) -> tuple[list[Language], dict[str, str]]:
        """The languages whose trivial program passes here, and why each other one does not."""
        ok, refused = [], {}
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="dscbatch-check") as pool:
            verdicts = list(pool.map(self.check, languages))
        for language, verdict in zip(languages, verdicts, strict=True):
            if verdict.passed:
                ok.append(language)
            else:
                lines = verdict.error.strip().splitlines()
                refused[language.code] = f"{verdict.status}: {lines[-1] if lines else ''}".rstrip(": ")
        return ok, refused


def require_runnable(toolchains: Toolchains, language: Language) -> None:
    """Raise unless the language's trivial program passes here (its toolchain is installed and works)."""
    verdict = toolchains.check(language)
    if not verdict.passed:
        lines = verdict.error.strip().splitlines()
        raise MissingToolchainError(f"{language.full_name} does not run here ({verdict.status}: "
                                    f"{lines[-1] if lines else 'no output'}); install its toolchain "
                                    "(docs/evaluation-languages.md)")
