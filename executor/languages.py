"""The languages the sandbox runs: each one's toolchain commands, limits and DeepSeek Coder's settings for it.

Commands are those of DeepSeek Coder's harness (``Evaluation/HumanEval/human_eval/execution.py`` in
deepseek-ai/DeepSeek-Coder) where it has one, else MultiPL-E's, with Debian bookworm's packages. A compiled
language gets more time and memory than a Python test, as a *compile* allowance on top of the sandbox's
settings (``DSCBATCH_SANDBOX_TIMEOUT``, ``DSCBATCH_SANDBOX_MEMORY_MB``):

- ``memory_mb`` is the address space the language needs at least. The JVM (javac, java, scalac) reserves a
  code cache, a class space and a heap up front, and V8 (node, tsc) its pointer cage, so their address space
  is several GB although they touch a few hundred MB; Go's and mono's runtimes reserve arenas the same way.
  The heap itself stays capped (``-Xmx``, ``--max-old-space-size``).
- ``compile_seconds`` is added to the wall and CPU limits: javac and scalac start a JVM and load the compiler
  (1-4 s of CPU each on one core), rustc and g++ link, tsc loads a 9 MB script.
- ``processes`` counts threads too (``RLIMIT_NPROC``): a JVM, Go's compiler and V8 start a thread per core for
  their compilers and collectors.

Julia and Swift have no Debian bookworm package: they are refused with that reason (``REFUSED``).

Test modules that Debian does not package ship with dscbatch (``executor/modules/<dir>``, mounted read-only at
``MODULES_DIR`` and named in the language's search path): ``js-md5`` for JavaScript and TypeScript (HumanEval-X's
JavaScript/162 requires it), a luaunit for Lua (MultiPL-E's Lua tests ``require('luaunit')``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dscbatch.core.errors import DscbatchError

JVM = ("-Xmx512m", "-Xss8m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:CICompilerCount=1",
       "-XX:ReservedCodeCacheSize=64m", "-XX:CompressedClassSpaceSize=64m", "-Xshare:auto")
# Debian's links to the chosen toolchains (/usr/bin/php, cc, java, libblas.so.3...): every language reads them.
ALTERNATIVES = "/etc/alternatives"
# Where the Java tests' jar is mounted inside the sandbox (DeepSeek's MultiPL-E Java tests import javatuples).
CLASSPATH_DIR = "/opt/dscbatch/classpath"
# Where a Go module (go.mod and vendor/, HumanEval-X's Go tests import testify) is mounted.
GO_MODULE_DIR = "/tmp/module"
# A Go build cache warmed once with the module's packages (read-only; each run copies it into its GOCACHE).
GO_CACHE_DIR = "/opt/dscbatch/go-build"
# Where a language's test modules shipped with dscbatch (executor/modules/<Language.modules>) are mounted.
MODULES_DIR = "/opt/dscbatch/modules"


@dataclass(frozen=True)
class Language:
    code: str  # DeepSeek's and MultiPL-E's file suffix: humaneval-<code>.jsonl
    full_name: str  # the name DeepSeek's instruction uses; its lower case is the answer's code fence
    source: str  # the file the program is written to, in the sandbox's /tmp
    compile: tuple[tuple[str, ...], ...] = ()  # commands that must exit 0 first; their failure is "failed"
    run: tuple[str, ...] = ()
    indent: int = 0  # DeepSeek's languge_settings[...]["indent"]
    main: str | None = None  # DeepSeek removes an answer's code from this text on (the tests bring their own)
    close_brace: bool = False  # DeepSeek closes the extracted function with "}" (php, ts, js)
    memory_mb: int = 0
    compile_seconds: float = 0.0
    processes: int = 32
    env: dict[str, str] = field(default_factory=dict)
    etc: tuple[str, ...] = ()  # configuration the toolchain reads, bound read-only
    # Output containing this fails a run that exits 0 (mono's Debug.Assert, rackunit's checks only print).
    fail_marker: str | None = None
    fail_on_output: bool = False  # any output fails a run that exits 0 (node's console.assert only prints)
    stop: tuple[str, ...] = ()  # base-style stop words when a problem file gives none
    class_named: bool = False  # the source file is named after the program's public class (Java)
    trivial: str = ""  # a program that passes: the executor's start-up check
    modules: str = ""  # the folder of executor/modules mounted at MODULES_DIR (its env names it)
    aliases: tuple[str, ...] = ()


def _jvm(prefix: str = "") -> tuple[str, ...]:
    return tuple(prefix + option for option in JVM)


_BUILT_IN = (
    Language("cpp", "cpp", "test.cpp", (("g++", "-std=c++17", "test.cpp", "-o", "a.out", "-lcrypto", "-lssl"),),
             ("./a.out",), main="int main()", memory_mb=1024, compile_seconds=20, aliases=("c++",),
             trivial="#include<cassert>\nint main() { assert(1 + 1 == 2); }\n"),
    Language("java", "Java", "Main.java",
             (("javac", *_jvm("-J"), "-cp", f".:{CLASSPATH_DIR}/*", "{source}"),),
             ("java", *JVM, "-ea", "-cp", f".:{CLASSPATH_DIR}/*", "{class}"), indent=4,
             main="public static void main", memory_mb=4096, compile_seconds=30, processes=128,
             etc=("/etc/java-17-openjdk",), class_named=True,
             trivial="public class Main { public static void main(String[] a) { assert 1 + 1 == 2; } }\n"),
    Language("php", "PHP", "test.php", (), ("php", "-f", "test.php"), close_brace=True, etc=("/etc/php",),
             trivial="<?php\nif (1 + 1 != 2) { exit(1); }\n"),
    Language("ts", "TypeScript", "test.ts", (("tsc", "test.ts", "--target", "ES2015", "--lib", "ES2015,DOM"),),
             ("node", "--max-old-space-size=512", "test.js"), close_brace=True, memory_mb=8192,
             compile_seconds=30, processes=64, aliases=("typescript",), modules="node",
             env={"NODE_PATH": MODULES_DIR},
             trivial="const x: number = 1 + 1;\nif (x !== 2) { throw new Error('no'); }\n"),
    Language("cs", "csharp", "Program.cs", (("mcs", "-d:DEBUG", "Program.cs"),), ("mono", "Program.exe"),
             main="public static void Main", memory_mb=4096, compile_seconds=20, processes=64,
             env={"MONO_TRACE_LISTENER": "Console.Error"}, etc=("/etc/mono",), fail_marker="Fail",
             aliases=("csharp", "c#"),
             trivial="class P { static void Main() { System.Diagnostics.Debug.Assert(1 + 1 == 2); } }\n"),
    Language("sh", "Bash", "test.sh", (), ("/bin/bash", "test.sh"), aliases=("bash",),
             trivial="[[ $((1 + 1)) = 2 ]]\n"),
    Language("js", "JavaScript", "test.js", (), ("node", "--max-old-space-size=512", "test.js"), close_brace=True,
             memory_mb=8192, processes=64, fail_on_output=True, aliases=("javascript",), modules="node",
             env={"NODE_PATH": MODULES_DIR},
             trivial="if (1 + 1 !== 2) { throw new Error('no'); }\n"),
    Language("go", "Go", "main_test.go", (), ("go", "test", "-count=1", "main_test.go"), memory_mb=4096,
             compile_seconds=10, processes=128,
             env={"GOCACHE": "/tmp/.cache/go-build", "GOPATH": "/tmp/go", "GOPROXY": "off",
                  "GOFLAGS": "-mod=vendor", "CGO_ENABLED": "0", "GO111MODULE": "auto"},
             aliases=("golang",),
             trivial="package main\n\nimport \"testing\"\n\nfunc TestOne(t *testing.T) {\n\tif 1+1 != 2 {\n"
                     "\t\tt.Fail()\n\t}\n}\n"),
    Language("rs", "Rust", "test.rs", (("rustc", "--edition", "2021", "-o", "a.out", "test.rs"),), ("./a.out",),
             memory_mb=2048, compile_seconds=30, processes=64, aliases=("rust",),
             trivial="fn main() { assert_eq!(1 + 1, 2); }\n"),
    Language("rb", "Ruby", "test.rb", (), ("ruby", "test.rb"), aliases=("ruby",), trivial="raise 'no' if 1 + 1 != 2\n"),
    Language("lua", "Lua", "test.lua", (), ("lua5.3", "test.lua"), modules="lua",
             env={"LUA_PATH": f"{MODULES_DIR}/?.lua;;"}, aliases=("lua5.3",),
             trivial="local lu = require('luaunit')\nlu.assertEquals({1 + 1}, {2})\n"),
    Language("r", "R", "test.r", (), ("Rscript", "test.r"), memory_mb=2048, etc=("/etc/R",),
             trivial="stopifnot(1 + 1 == 2)\n"),
    Language("pl", "Perl", "test.pl", (), ("perl", "test.pl"), aliases=("perl",),
             trivial="use Test::Deep;\ndie unless eq_deeply([1 + 1], [2]);\n"),  # MultiPL-E's tests use Test::Deep
    Language("scala", "Scala", "test.scala", (("scalac", "-J-Xmx512m", "-J-Xss8m", "-d", ".", "test.scala"),),
             ("scala", "-J-Xmx512m", "-J-Xss8m", "-cp", ".", "Problem"), indent=4,
             main="def main", memory_mb=4096, compile_seconds=60, processes=128,
             etc=("/etc/java-17-openjdk",),
             trivial="object Problem { def main(args: Array[String]) = { assert(1 + 1 == 2) } }\n"),
    Language("rkt", "Racket", "test.rkt", (), ("racket", "test.rkt"), memory_mb=2048, compile_seconds=10,
             processes=64, etc=("/etc/racket",), aliases=("racket",), fail_marker="FAILURE",
             trivial="#lang racket\n(unless (= 2 (+ 1 1)) (exit 1))\n"),
    Language("d", "D", "test.d", (("gdc", "-funittest", "-o", "a.out", "test.d"),), ("./a.out",),
             memory_mb=1024, compile_seconds=30, trivial="unittest { assert(1 + 1 == 2); }\nvoid main() {}\n"),
)
# Python runs as the sandbox's own program, as it always has (executor/sandbox.py).
PYTHON = Language("python", "Python", "main.py", indent=4, stop=("\ndef", "\nclass", "\nif", "\n#", "\nprint"),
                  trivial="pass\n", aliases=("py",))
LANGUAGES: dict[str, Language] = {language.code: language for language in (PYTHON, *_BUILT_IN)}
DEEPSEEK_TABLE = ("python", "cpp", "java", "php", "ts", "cs", "sh", "js")
REFUSED = {
    "jl": "Julia has no Debian bookworm package (julia left Debian after bullseye); its toolchain is not in the "
          "executor image",
    "swift": "Swift has no Debian package (bookworm ships no swiftlang); its toolchain is not in the executor image",
}
# `--language multiple`: every language of MultiPL-E's HumanEval that runs here.
MULTIPLE = "multiple"


class UnknownLanguageError(DscbatchError):
    pass


def language(name: str) -> Language:
    """The language for a code, full name or alias (``cpp``, ``C++``, ``rust``...); refused ones say why."""
    key = name.strip().lower()
    for candidate in LANGUAGES.values():
        if key in (candidate.code, candidate.full_name.lower(), *candidate.aliases):
            return candidate
    for code, reason in REFUSED.items():
        if key in (code, {"jl": "julia"}.get(code)):
            raise UnknownLanguageError(f"language {name!r} is not supported: {reason}")
    raise UnknownLanguageError(f"unknown language {name!r}; supported: {', '.join(LANGUAGES)}")
