"""Hostile programs in C++, Java, Go, Rust, JavaScript, PHP and Bash end as verdicts with nothing escaping, as
the Python ones of tests/test_sandbox.py do: a fork bomb, an endless loop, a huge allocation, a write outside
/tmp, a socket to a server on the host's loopback, reading other processes' environment."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from dscbatch.executor.languages import LANGUAGES
from dscbatch.executor.sandbox import Limits, Sandbox, Verdict
from dscbatch.executor.toolchain import Toolchains
from tests.test_sandbox import SLACK_SECONDS, _slot_processes, loopback_server  # noqa: F401 (a fixture)

# The run's own limit is 3 s; compilation has the language's allowance on top.
LIMITS = Limits(wall_seconds=3, cpu_seconds=3, memory_bytes=512 << 20, processes=24)
SECRET = "hunter2-sandbox-secret"
ESCAPE = "/usr/dscbatch-escaped"


def _go(body: str, imports: str) -> str:
    return f'package main\n\nimport (\n    "testing"\n{imports}\n)\n\nfunc TestHostile(t *testing.T) {{\n{body}\n}}\n'


def _rust(body: str) -> str:
    return f"fn main() {{\n{body}\n}}\n"


def _java(body: str) -> str:
    return ("import java.io.*;\nimport java.net.*;\nimport java.nio.file.*;\nimport java.util.*;\n"
            "public class Main {\n    public static void main(String[] args) throws Exception {\n"
            f"{body}\n    }}\n}}\n")


CPP_ENV = """#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <cstdlib>
extern char **environ;
int main() {
    std::string seen;
    for (char **e = environ; *e; ++e) seen += *e;
    for (auto &d : std::filesystem::directory_iterator("/proc")) {
        std::ifstream f(d.path() / "environ");
        std::stringstream s; s << f.rdbuf(); seen += s.str();
    }
    std::cerr << "seen: " << seen << std::endl;
    return 1;
}
"""
CPP_SOCKET = """#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <cstdio>
int main() {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{}; a.sin_family = AF_INET; a.sin_port = htons(PORT);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(s, (sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
    return 0;
}
"""
# (fork bomb, endless loop, huge allocation, write to ESCAPE, socket to 127.0.0.1:PORT, environments)
PROGRAMS: dict[str, tuple[str, str, str, str, str, str]] = {
    "cpp": (
        "#include <unistd.h>\nint main() { while (true) fork(); }\n",
        "int main() { volatile long x = 0; while (true) x++; }\n",
        "#include <new>\n#include <cstring>\nint main() { char *p = new char[16L << 30]; memset(p, 1, 16L << 30);"
        " return p[7]; }\n",
        f'#include <cstdio>\nint main() {{ FILE *f = fopen("{ESCAPE}", "w"); if (!f) {{ perror("fopen"); '
        "return 1; } fputs(\"x\", f); return fclose(f); }\n",
        CPP_SOCKET, CPP_ENV),
    "java": (
        _java('while (true) { try { new ProcessBuilder("/bin/sh", "-c", "sleep 100").start(); }'
              " catch (Exception e) { } }"),
        _java("long x = 0; while (true) { x++; }"),
        _java("long[] a = new long[2_000_000_000]; System.out.println(a[7]);"),
        _java(f'try (FileWriter w = new FileWriter("{ESCAPE}")) {{ w.write("x"); }}'),
        _java('new Socket("127.0.0.1", PORT).close();'),
        _java('StringBuilder seen = new StringBuilder(System.getenv().toString());\n'
              'for (File d : new File("/proc").listFiles()) { try { seen.append(new String('
              'Files.readAllBytes(Paths.get(d.getPath(), "environ")))); } catch (Exception e) { } }\n'
              "throw new RuntimeException(seen.toString());")),
    "go": (
        _go('    for {\n        syscall.ForkExec("/bin/sh", []string{"sh", "-c", "sleep 100"}, nil)\n    }',
            '    "syscall"'),
        _go("    x := 0\n    for {\n        x++\n    }", ""),
        _go("    b := make([]byte, 16<<30)\n    b[7] = 1\n    t.Log(b[7])", ""),
        _go(f'    if err := os.WriteFile("{ESCAPE}", []byte("x"), 0o644); err != nil {{\n        t.Fatal(err)\n'
            "    }", '    "os"'),
        _go('    if _, err := net.Dial("tcp", "127.0.0.1:PORT"); err != nil {\n        t.Fatal(err)\n    }',
            '    "net"'),
        _go('    seen := strings.Join(os.Environ(), " ")\n    paths, _ := filepath.Glob("/proc/*/environ")\n'
            "    for _, p := range paths {\n        b, _ := os.ReadFile(p)\n        seen += string(b)\n    }\n"
            "    t.Fatal(seen)", '    "os"\n    "path/filepath"\n    "strings"')),
    "rs": (
        _rust('    loop { let _ = std::process::Command::new("/bin/sh").args(["-c", "sleep 100"]).spawn(); }'),
        _rust("    let mut x: u64 = 1;\n    loop { x = x.wrapping_add(1); if x == 0 { println!(\"{}\", x); } }"),
        _rust("    let v = vec![1u8; 16 << 30];\n    println!(\"{}\", v[7]);"),
        _rust(f'    std::fs::write("{ESCAPE}", "x").unwrap();'),
        _rust('    std::net::TcpStream::connect(("127.0.0.1", PORT)).unwrap();'),
        _rust("    let mut seen: String = std::env::vars().map(|(k, v)| k + &v).collect();\n"
              '    for d in std::fs::read_dir("/proc").unwrap() {\n'
              '        if let Ok(b) = std::fs::read(d.unwrap().path().join("environ")) {\n'
              "            seen += &String::from_utf8_lossy(&b);\n        }\n    }\n    panic!(\"{}\", seen);")),
    "js": (
        "const cp = require('child_process');\nwhile (true) { try { cp.spawnSync('/bin/sh', ['-c', 'sleep 100 &']); }"
        " catch (e) { } }\n",
        "let x = 0;\nwhile (true) { x++; }\n",
        "const a = [];\nwhile (true) { a.push(new Array(1 << 20).fill(1.5)); }\n",
        f"require('fs').writeFileSync('{ESCAPE}', 'x');\n",
        "const s = require('net').connect(PORT, '127.0.0.1');\ns.on('connect', () => process.exit(0));\n"
        "s.on('error', (e) => { console.error(e.message); process.exit(1); });\n",
        "const fs = require('fs');\nlet seen = JSON.stringify(process.env);\n"
        "for (const d of fs.readdirSync('/proc')) { try { seen += fs.readFileSync(`/proc/${d}/environ`); }"
        " catch (e) { } }\nthrow new Error(seen);\n"),
    "php": (
        "<?php\nwhile (true) { proc_open('sleep 100', [], $pipes); }\n",
        "<?php\n$x = 0;\nwhile (true) { $x++; }\n",
        "<?php\nini_set('memory_limit', '-1');\n$s = str_repeat('x', 16 << 30);\necho strlen($s);\n",
        f"<?php\nif (file_put_contents('{ESCAPE}', 'x') === false) {{ exit(1); }}\n",
        "<?php\n$s = fsockopen('127.0.0.1', PORT, $errno, $errstr, 2);\nif (!$s) { echo $errstr; exit(1); }\n",
        "<?php\n$seen = json_encode(getenv());\nforeach (glob('/proc/*/environ') as $p) "
        "{ $seen .= @file_get_contents($p); }\necho $seen;\nexit(1);\n"),
    "sh": (
        "bomb() { bomb | bomb; }\nbomb\n",
        "while true; do :; done\n",
        "printf -v x '%*s' 4000000000 ''\necho ${#x}\n",
        f"echo x > {ESCAPE}\n",
        "exec 3<>/dev/tcp/127.0.0.1/PORT\n",
        "env\ncat /proc/*/environ\nexit 1\n"),
}
HOSTILE = ("fork bomb", "endless loop", "huge allocation", "write outside /tmp", "socket", "environments")


@pytest.fixture(scope="module")
def toolchains() -> Toolchains:
    return Toolchains(Sandbox(LIMITS))


def _hostile(toolchains: Toolchains, code: str, program: str) -> Verdict:
    lang = LANGUAGES[code]
    started = time.monotonic()
    verdict = toolchains.run(lang, program)
    limit = LIMITS.wall_seconds + lang.compile_seconds
    assert time.monotonic() - started < limit + SLACK_SECONDS, verdict
    assert verdict.status in ("failed", "timeout", "memory"), verdict
    # A bomb's processes die with the sandbox's pid namespace, which the kernel tears down as it goes.
    deadline = time.monotonic() + SLACK_SECONDS
    while _slot_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _slot_processes() == []
    return verdict


@pytest.mark.parametrize("code", sorted(PROGRAMS))
def test_hostile_programs_end_as_verdicts_and_nothing_escapes(
        toolchains: Toolchains, code: str, loopback_server: tuple[int, list[socket.socket]],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not toolchains.check(LANGUAGES[code]).passed:
        pytest.skip(f"{code}'s toolchain is not installed here (make test-languages installs every one)")
    monkeypatch.setenv("DSCBATCH_TEST_SECRET", SECRET)
    port, accepted = loopback_server
    fork, loop, allocation, write, connect, environments = PROGRAMS[code]
    assert _hostile(toolchains, code, fork).status in ("failed", "timeout")
    assert _hostile(toolchains, code, loop).status == "timeout"
    assert _hostile(toolchains, code, allocation).status in ("memory", "failed", "timeout")  # bash: slow to fill
    assert _hostile(toolchains, code, write).status == "failed"
    assert not Path(ESCAPE).exists()
    assert _hostile(toolchains, code, connect.replace("PORT", str(port))).status == "failed"
    assert accepted == []
    verdict = _hostile(toolchains, code, environments)
    assert verdict.status == "failed" and SECRET not in verdict.error and "DSCBATCH" not in verdict.error
    assert toolchains.check(LANGUAGES[code]).passed  # still serving
